"""Confidence calibration: expected calibration error, reliability bins and temperature scaling.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks",
arXiv:1706.04599, section 4.2) divides every logit by one scalar T > 0 fitted by minimising the
negative log-likelihood on held-out data. The argmax, and so the accuracy, never changes; only
the probabilities do. The fitted T lives in the checkpoint's metadata (``calibration``), where
predict, evaluate, export and the report pick it up.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ._io import write_atomic, write_json_atomic
from .checkpoint import load_checkpoint, resolve_checkpoint_path
from .config import recorded_config
from .data import build_eval_loader
from .data.loaders import SPLITS
from .errors import DataWarning, UserError
from .runtime import cpu_threads, resolve_device

N_BINS = 15  # Guo et al.'s choice; ECE depends on the bin count, so it is fixed
T_RANGE = (0.05, 20.0)  # a fit outside this range means the held-out split is degenerate
# Below these the fit says more about the split than about the model: T is set by a handful of
# logits, and with no mistake at all the NLL keeps falling as T -> 0 (every probability -> 100%).
# Guo et al. fit on 5,000 to 25,000 validation images.
MIN_FIT_IMAGES = 100
MIN_FIT_ERRORS = 5


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


def fit_problem(logits: torch.Tensor, targets: torch.Tensor, split: str) -> str | None:
    """Why ``logits`` of the ``split`` split cannot fit a temperature worth keeping, or None."""
    n = len(targets)
    wrong = int((logits.argmax(1) != targets).sum())
    if n < MIN_FIT_IMAGES:
        return f"the {split} split has {n} images, too few to fit a temperature (at least {MIN_FIT_IMAGES})"
    if wrong < MIN_FIT_ERRORS:
        return (f"the model is wrong on {wrong} of the {n} {split} images, too few mistakes to fit a "
                f"temperature (at least {MIN_FIT_ERRORS}): the fit would make every prediction near 100% sure")
    return None


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


def temperature_of(meta: Mapping[str, Any]) -> float:
    """The temperature recorded in a checkpoint's (or exported file's) decoded metadata; 1 if none.
    Metadata is plain JSON anyone can edit, so anything but a positive finite number is refused."""
    calibration = meta.get("calibration") or {}
    t = calibration.get("temperature", 1.0) if isinstance(calibration, Mapping) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise UserError(f"the calibration temperature in this model's metadata is {t!r}, not a positive "
                        f"number; run 'resnetkit calibrate' on the checkpoint again")
    return float(t)


# ------------------------------------------------------------------ a run's checkpoint
@torch.no_grad()
def split_logits(model: nn.Module, batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 CPU logits and targets of every batch, in eval mode."""
    was_training = model.training
    model.eval()
    pairs = [(model(x).float().cpu(), y.cpu()) for x, y in batches]
    model.train(was_training)
    if not pairs:
        raise UserError("the split has no images to calibrate on")
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def fit_split() -> str:
    """The split a temperature is fitted on: the validation split, held out of training and of
    the test split (Guo et al. fit on validation data). A version whose loaders have no val
    split falls back to the test split and says so in the record."""
    return "val" if "val" in SPLITS else "test"


def calibrate_checkpoint(path: str | os.PathLike[str], *, split: str | None = None,
                         device: str = "auto") -> dict[str, Any]:
    """Fit a temperature for a checkpoint (or run folder: its best) on ``split`` (default: the
    validation split), measure ECE before and after there and on the test split, and store the
    record in the checkpoint's metadata (``calibration``) and the run's report.json (``ece``)."""
    file = resolve_checkpoint_path(path)
    dev = resolve_device(device)
    loaded = load_checkpoint(file, map_location=dev)
    cfg = recorded_config(loaded.config)
    split = split or fit_split()
    if split == "val" and cfg.val_size == 0:
        raise UserError("this run has no val split (it trained with --val-size 0); fit on the test split "
                        "with 'resnetkit calibrate RUN --split test' (its ECE after is then optimistic)")
    with cpu_threads(cfg.threads, dev):
        logits, targets = split_logits(loaded.model, build_eval_loader(cfg, split, dev, spec=loaded.spec))
        problem = fit_problem(logits, targets, split)
        t = 1.0 if problem else fit_temperature(logits, targets)
        if not problem and t in T_RANGE:  # the fit ran into a bound: no optimum inside the range
            problem = f"the temperature fitted on the {split} split ran to its bound ({t:g})"
            t = 1.0
        record: dict[str, Any] = {"temperature": t, "fit_on": split, "fit_images": len(targets),
                                  "checkpoint": file.name,
                                  "bins": N_BINS, **calibration_summary(logits, targets, t)}
        if problem:
            record["warning"] = f"{problem}; the temperature stays 1 (probabilities unchanged)"
            warnings.warn(record["warning"], DataWarning, stacklevel=2)
        test_loader = build_eval_loader(cfg, "test", dev, spec=loaded.spec) if split != "test" else None
        if test_loader is not None and getattr(test_loader, "test_is_val", False):
            # no test split: the "test" loader is the val split again, not a second measure
            record["note"] = "no test split: the ECE after is measured on the split it was fitted on (optimistic)"
        elif test_loader is not None:
            test = calibration_summary(*split_logits(loaded.model, test_loader), t)
            record.update({f"test_{k}": v for k, v in test.items()})
    if split == "test":
        record["note"] = "fitted and measured on the test split: the ECE after is optimistic"
    write_calibration(file, record)
    _update_report(file.parent / "report.json", record)
    return record


def write_calibration(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Rewrite a checkpoint with ``calibration`` added to its metadata, atomically; weights and
    every other key are kept byte for byte."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata["calibration"] = json.dumps(dict(record))
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _update_report(path: Path, record: Mapping[str, Any]) -> None:
    """report.json's ``ece`` becomes the calibrated test ECE, the old one ``ece_uncalibrated``."""
    if not path.is_file():
        return
    report = json.loads(path.read_text(encoding="utf-8"))
    after = record.get("test_ece_after", record["ece_after"])
    before = record.get("test_ece_before", record["ece_before"])
    report.update({"ece": after, "ece_uncalibrated": before, "ece_bins": N_BINS, "calibration": dict(record)})
    write_json_atomic(path, report)
