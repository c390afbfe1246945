"""Datasets, presets and loaders.

``build_loaders(cfg, device)`` turns a RunConfig into a :class:`DatasetSpec` and train, val
and test loaders (a :class:`Loaders` bundle) that yield normalized batches on the device;
``build_eval_loader`` gives one split (train, val or test) for evaluation; :mod:`.splits` says
where each split comes from; ``dataset_spec`` resolves the spec alone; ``check_dataset`` reports on the data.
``as_source`` wraps data handed over in Python (arrays, tensors, a torch Dataset).
See :mod:`.loaders` for the two loader paths, :mod:`.folders` for image-folder rules,
:mod:`.transforms` for reading images and the eval transform that predict shares.
"""
from __future__ import annotations

from ._util import DataWarning
from .check import check_dataset
from .loaders import Loaders, build_eval_loader, build_loaders, dataset_spec
from .presets import list_datasets, tta_for
from .python import as_source
from ..specs import DatasetSpec

__all__ = ["build_loaders", "build_eval_loader", "dataset_spec", "DatasetSpec", "check_dataset",
           "list_datasets", "Loaders", "DataWarning", "as_source", "tta_for"]
