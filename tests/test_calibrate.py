"""Calibration: ECE as Guo et al. define it, and temperature scaling that repairs over-confidence."""
from __future__ import annotations

import pytest
import torch

from resnetkit.calibrate import (TemperatureScaled, calibration_summary, expected_calibration_error,
                                 fit_temperature, reliability_bins)


def calibrated_logits(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from the softmax of those logits: calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 2
    targets = torch.multinomial(logits.softmax(1), 1, generator=g)[:, 0]
    return logits, targets


def test_ece_by_hand() -> None:
    # two samples at confidence 0.9 (one right), two at 0.6 (both right)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    targets = torch.tensor([0, 1, 0, 1])
    bins = reliability_bins(probs, targets, n_bins=15)
    full = [b for b in bins if b.count]
    assert [(b.count, round(b.confidence, 6), b.accuracy) for b in full] == [(2, 0.6, 1.0), (2, 0.9, 0.5)]
    assert expected_calibration_error(probs, targets) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert sum(b.count for b in bins) == 4 and len(bins) == 15


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model() -> None:
    logits, targets = calibrated_logits(4000, 10, seed=0)
    sharp = logits * 3  # the same ranking, three times too sure
    fit_logits, fit_targets = sharp[:2000], targets[:2000]
    held_logits, held_targets = sharp[2000:], targets[2000:]
    t = fit_temperature(fit_logits, fit_targets)
    assert t == pytest.approx(3.0, rel=0.15)
    s = calibration_summary(held_logits, held_targets, t)
    assert s["ece_before"] > 0.15 and s["ece_after"] < s["ece_before"] / 3
    assert s["nll_after"] < s["nll_before"]
    # the argmax, so the accuracy, is untouched
    assert torch.equal((held_logits / t).argmax(1), held_logits.argmax(1))


def test_a_calibrated_model_keeps_a_temperature_near_one() -> None:
    logits, targets = calibrated_logits(3000, 5, seed=1)
    assert fit_temperature(logits, targets) == pytest.approx(1.0, abs=0.1)
    assert expected_calibration_error(logits.softmax(1), targets) < 0.03


def test_temperature_scaled_module_divides_the_logits() -> None:
    net = torch.nn.Linear(3, 4)
    x = torch.randn(5, 3)
    assert torch.allclose(TemperatureScaled(net, 2.5)(x), net(x) / 2.5)
