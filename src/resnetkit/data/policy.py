"""RandAugment and TrivialAugment on the in-memory path: uint8 batches on the training device.

``torchvision.transforms.v2.RandAugment`` (Cubuk et al. 2019, arXiv:1909.13719) and
``TrivialAugmentWide`` (Mueller & Hutter 2021, arXiv:2103.10158) draw their ops and magnitudes
once per call and apply them to every image of the call: one call on a batch would give all its
images the same ops, a different augmentation from the per-image one these papers (and the
streaming path) use. So the batch is split and each image gets its own call, on the device;
that costs one small kernel sequence per image and op (the price of following the papers).

The draws of a batch come from a generator seeded by (seed, epoch, batch), inside
``torch.random.fork_rng``, so an epoch's batches depend on the seed and epoch alone, as the rest
of the in-memory path does, and the global generator is left alone.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from .sampling import seeded_generator

POLICIES = ("randaugment", "trivialaugment")


def policy_transform(name: str, interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR
                     ) -> v2.Transform:
    """The v2 transform of an --augment policy, with torchvision's defaults (RandAugment: 2 ops
    of magnitude 9 out of 31 bins) and its references' bilinear interpolation."""
    if name == "randaugment":
        return v2.RandAugment(interpolation=interpolation)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide(interpolation=interpolation)
    raise ValueError(f"unknown augmentation policy {name!r}; choose one of {', '.join(POLICIES)}")


class BatchPolicy:
    """Apply a policy per image to a uint8 batch (B, C, H, W), seeded by the batch's key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transform = policy_transform(name)

    def __call__(self, x: torch.Tensor, *key: object) -> torch.Tensor:
        if x.dtype != torch.uint8:  # a random resized crop returns float 0..255
            x = x.round().clamp_(0, 255).to(torch.uint8)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeded_generator(*key, "policy").initial_seed())
            return torch.stack([self.transform(img) for img in x])
