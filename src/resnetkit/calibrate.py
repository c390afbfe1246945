"""Confidence calibration: expected calibration error, reliability bins and temperature scaling.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks",
arXiv:1706.04599, section 4.2) divides every logit by one scalar T > 0 fitted by minimising the
negative log-likelihood on held-out data. The argmax, and so the accuracy, never changes; only
the probabilities do. The fitted T lives in the checkpoint's metadata (``calibration``), where
predict, evaluate, export and the report pick it up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

N_BINS = 15  # Guo et al.'s choice; ECE depends on the bin count, so it is fixed
T_RANGE = (0.05, 20.0)  # a fit outside this range means the held-out split is degenerate


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float  # mean top probability of the samples in the bin (0 when empty)
    accuracy: float  # fraction of them predicted right (0 when empty)


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS) -> list[ReliabilityBin]:
    """Samples grouped by top probability into ``n_bins`` equal-width bins (lower, upper]."""
    conf, pred = probs.detach().float().cpu().max(dim=1)
    hit = (pred == targets.detach().cpu()).float()
    # bin m holds conf in (m/n, (m+1)/n]; conf is never 0 after a softmax
    index = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins)
    conf_sum = torch.zeros(n_bins).index_add_(0, index, conf)
    hit_sum = torch.zeros(n_bins).index_add_(0, index, hit)
    safe = count.clamp(min=1)
    return [ReliabilityBin(m / n_bins, (m + 1) / n_bins, int(count[m]), float(conf_sum[m] / safe[m]),
                           float(hit_sum[m] / safe[m])) for m in range(n_bins)]


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS) -> float:
    """ECE = sum over bins of |bin| / n * |accuracy(bin) - confidence(bin)| (Guo et al. eq. 3)."""
    bins = reliability_bins(probs, targets, n_bins)
    n = sum(b.count for b in bins)
    if n == 0:
        return float("nan")
    return sum(b.count / n * abs(b.accuracy - b.confidence) for b in bins)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 minimising the mean cross-entropy of ``logits / T`` (LBFGS on log T, so T stays
    positive without a constraint; the NLL is convex in 1/T, so the optimum is unique)."""
    logits = logits.detach().float().cpu()
    targets = targets.detach().cpu()
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, T_RANGE[0]), T_RANGE[1])


def calibration_summary(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> dict[str, float]:
    """ECE and NLL of ``logits`` before and after dividing by ``temperature``."""
    scaled = logits.float() / temperature
    return {"ece_before": expected_calibration_error(logits.float().softmax(1), targets),
            "ece_after": expected_calibration_error(scaled.softmax(1), targets),
            "nll_before": float(nn.functional.cross_entropy(logits.float(), targets)),
            "nll_after": float(nn.functional.cross_entropy(scaled, targets))}


class TemperatureScaled(nn.Module):
    """``model(x) / temperature``: calibrated logits from an unchanged model."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def with_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """``model`` itself when ``temperature`` is 1, else the scaled wrapper."""
    return model if temperature == 1.0 else TemperatureScaled(model, temperature)


def temperature_of(meta: dict[str, Any]) -> float:
    """The temperature recorded in a checkpoint's (or exported file's) decoded metadata; 1 if none."""
    calibration = meta.get("calibration") or {}
    return float(calibration.get("temperature", 1.0))
