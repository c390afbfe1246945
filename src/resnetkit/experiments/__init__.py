"""Experiments of He et al. 2015 (arXiv:1512.03385), each built on resnetkit.training.train."""
