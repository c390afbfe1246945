"""Mixup/CutMix targets and the per-image augmentation policies of the in-memory path."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from resnetkit.config import RunConfig
from resnetkit.data.policy import BatchPolicy
from resnetkit.data.presets import get_preset
from resnetkit.data.streaming import train_transform
from resnetkit.training.mix import Mixer


@pytest.mark.parametrize("flags", [dict(mixup=0.2), dict(cutmix=1.0), dict(mixup=0.2, cutmix=1.0, mix_prob=0.5)])
def test_mixed_targets_are_distributions_over_at_most_two_labels(flags: dict) -> None:
    torch.manual_seed(0)
    mixer = Mixer(RunConfig(**flags), num_classes=10)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    mixed = 0
    for _ in range(10):
        out, t = mixer(x.clone(), y)
        assert out.shape == x.shape and t.shape == (16, 10) and t.dtype == torch.float32
        assert torch.allclose(t.sum(1), torch.ones(16))  # every target sums to 1
        assert ((t > 0).sum(1) <= 2).all()  # its own label and its neighbour's (the batch rolled by 1)
        assert torch.equal(t[torch.arange(16), y] > 0, torch.ones(16, dtype=torch.bool))
        mixed += int(not torch.equal(out, x))
    assert mixed > 0


def test_mix_prob_zero_gives_one_hot_targets_and_untouched_images() -> None:
    mixer = Mixer(RunConfig(mixup=1.0, mix_prob=0.0), num_classes=4)
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    out, t = mixer(x, y)
    assert torch.equal(out, x) and torch.equal(t, torch.nn.functional.one_hot(y, 4).float())


def test_switch_prob_picks_cutmix_or_mixup() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 4
    out, _ = Mixer(RunConfig(mixup=1.0, cutmix=1.0, mix_switch_prob=1.0), 4)(x.clone(), y)
    pasted = (out == x.roll(1, 0)) | (out == x)  # cutmix copies pixels, it never blends them
    assert pasted.all()
    out, _ = Mixer(RunConfig(mixup=1.0, cutmix=1.0, mix_switch_prob=0.0), 4)(x.clone(), y)
    assert not ((out == x.roll(1, 0)) | (out == x)).all()  # mixup blends


def test_without_mixing_the_mixer_is_the_identity() -> None:
    mixer = Mixer(RunConfig(), num_classes=3)
    x, y = torch.randn(2, 1, 3, 3), torch.tensor([0, 2])
    assert not mixer.active and mixer(x, y) == (x, y)


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment"])
def test_policy_is_per_image_and_seeded(name: str) -> None:
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(24, 3, 16, 16).contiguous()
    policy = BatchPolicy(name)
    a, b, c = policy(x, 0, 1, 0, 0), policy(x, 0, 1, 0, 0), policy(x, 0, 2, 0, 0)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)  # a function of (seed, epoch, rank, batch)
    distinct = {img.numpy().tobytes() for img in a}
    assert len(distinct) > 4  # one image, 24 copies: each got its own ops
    gray = policy(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8), 0)
    assert gray.shape == (4, 1, 8, 8)


def test_streaming_transform_appends_the_policy() -> None:
    preset = get_preset("imagefolder")
    for name, kind in (("randaugment", v2.RandAugment), ("trivialaugment", v2.TrivialAugmentWide)):
        ops = train_transform(preset, 64, 73, "bilinear", name, preset.mean).transforms
        assert any(isinstance(op, kind) for op in ops)
        assert not any(isinstance(op, v2.RandomErasing) for op in ops)


def test_in_memory_loader_applies_the_policy(tmp_path) -> None:
    from resnetkit.data import build_loaders

    cfg = RunConfig(dataset="digits", subset=64, batch_size=32, augment="randaugment", seed=0)
    loaders = build_loaders(cfg, "cpu")
    assert loaders.train.policy is not None and loaders.test.policy is None
    loaders.train.set_epoch(1)
    first = [x for x, _ in loaders.train]
    loaders.train.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in loaders.train]))
    basic = build_loaders(cfg.replace(augment="basic"), "cpu").train
    basic.set_epoch(1)
    assert not torch.equal(first[0], next(iter(basic))[0])
