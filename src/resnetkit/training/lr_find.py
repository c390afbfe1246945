"""``resnetkit lr-find``: Smith's learning-rate range test (Smith 2017, arXiv:1506.01186, 3.3).

The run's own data, model, loss and optimizer (a :class:`~.trainer.Trainer` set up from the
same flags as ``train``) take one optimizer step per batch while the learning rate grows
exponentially from ``start_lr`` to ``end_lr``. The loss is smoothed with a bias-corrected
exponential moving average (as fastai and torch-lr-finder do); the test stops when the smoothed
loss exceeds ``diverge`` times its minimum or is not finite. The suggestion is the steepest
descent of the smoothed loss against log(lr), measured over a window of a decade. Afterwards the model (weights and BatchNorm
statistics) and the optimizer are restored to their state before the test.
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from .._io import write_atomic, write_json_atomic
from ..config import RunConfig
from ..errors import UserError
from . import finetune
from .recipes import resolve_config
from ..runtime import cpu_threads
from ..steps import Batch, micro_batches, train_step
from .setup import as_config
from .trainer import Trainer

SMOOTHING = 0.98  # EMA factor of the loss (fastai's default)
SKIP_START, SKIP_END = 10, 5  # points left out of the suggestion: the noisy start, the blow-up
WINDOW = 0.5  # decades of lr on each side of a point for its slope
MAX_ITER = 10_000  # steps: 100 resolve the curve; a typo of 100000000 must not run for days
PROGRESS_EVERY = 0.1  # share of the steps between two progress lines


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed
    raw: list[float] = field(default_factory=list)
    stop: str = "end_lr reached"
    suggestion: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"suggested_lr": self.suggestion, "method": "steepest descent", "stop": self.stop,
                "lr": self.lrs, "smoothed_loss": self.losses, "loss": self.raw}


def lr_find(cfg: RunConfig | Mapping[str, Any] | None = None, *, start_lr: float = 1e-7,
            end_lr: float = 10.0, num_iter: int = 100, diverge: float = 4.0, verbose: bool = True,
            **overrides: Any) -> RangeTest:
    """Run the range test for a training config; write ``lr_find.png`` and ``lr_find.json`` to
    its ``out`` folder (default ``runs/lr-find``)."""
    config, explicit = as_config(cfg, overrides)
    check_range(start_lr, end_lr, num_iter, diverge)
    check_unused(config)
    if config.nproc > 1 or config.resume:
        raise UserError("lr-find runs in one process on a new model: drop --nproc and --resume")
    out = Path(config.out or "runs/lr-find")
    trainer = Trainer(config.replace(out=str(out)), explicit=explicit, verbose=verbose)
    with cpu_threads(trainer.cfg.threads, trainer.device):
        trainer.setup()
        result = range_test(trainer, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, diverge=diverge)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "lr_find.json", {**result.to_dict(), "recipe_lr": trainer.cfg.lr})
    plot(result, out / "lr_find.png", recipe_lr=trainer.cfg.lr)
    return result


def check_range(start_lr: float, end_lr: float, num_iter: int, diverge: float) -> None:
    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise UserError(f"--start-lr and --end-lr need finite values with 0 < start < end, got "
                        f"{start_lr:g} and {end_lr:g}")
    if not SKIP_START + SKIP_END + 2 <= num_iter <= MAX_ITER:
        raise UserError(f"--num-iter must be {SKIP_START + SKIP_END + 2} to {MAX_ITER:,} steps, got {num_iter:,}; "
                        f"100 to 1,000 resolve the curve well")
    if not (math.isfinite(diverge) and diverge > 1):
        raise UserError(f"--diverge is a ratio to the lowest loss and must be a finite number > 1, got {diverge:g}")


# lr-find builds a run's model and data but takes no epoch, evaluation or log of a run: the flags
# of train that shape those are not lr-find's (its parser leaves them out; a --config file's are
# dropped with a note)
UNUSED_KEYS = ("tensorboard", "early_stop", "time_budget", "eval_every", "tta", "ema", "log_grad_norms")


def check_unused(config: RunConfig) -> None:
    """Refuse the settings of a run that the range test would silently not apply."""
    default = RunConfig()
    given = [k for k in UNUSED_KEYS if getattr(config, k) != getattr(default, k)]
    if given:
        raise UserError(f"lr-find takes no {', '.join(given)}: it runs no epochs, evaluations or logs "
                        f"of a training run; leave them out")


def plan(cfg: RunConfig | Mapping[str, Any] | None = None, *, start_lr: float = 1e-7, end_lr: float = 10.0,
         num_iter: int = 100, diverge: float = 4.0, **overrides: Any) -> dict[str, Any]:
    """What lr-find would do (``--dry-run``): the resolved model, data and batch, the lr range and
    the files it would write; nothing is built, run or written."""
    config, explicit = as_config(cfg, overrides)
    check_range(start_lr, end_lr, num_iter, diverge)
    check_unused(config)
    resolved = resolve_config(config, explicit)
    out = Path(config.out or "runs/lr-find")
    return {"model": resolved.model, "dataset": resolved.dataset, "batch_size": resolved.batch_size,
            "optimizer": resolved.optimizer, "start_lr": start_lr, "end_lr": end_lr, "num_iter": num_iter,
            "images": num_iter * resolved.batch_size * resolved.accum_steps, "diverge": diverge,
            "writes": [str(out / "lr_find.png"), str(out / "lr_find.json")]}


def range_test(trainer: Trainer, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_iter: int = 100,
               diverge: float = 4.0) -> RangeTest:
    """The test on a set-up trainer; its model and optimizer are restored afterwards."""
    model, optimizer = trainer.model, trainer.optimizer
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    # each group keeps its ratio to the first (fine-tuning's backbone multiplier)
    base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    ratios = [b / base[0] for b in base]
    gamma = (end_lr / start_lr) ** (1 / (num_iter - 1))
    result, avg, best = RangeTest(), 0.0, math.inf
    try:
        finetune.set_epoch(model, trainer.cfg, 1, trainer.fresh_modules)
        trainer.net.train()
        steps = updates(trainer, batches(trainer.loaders.train))
        for i in range(num_iter):
            lr = start_lr * gamma**i
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            loss = next(steps)
            avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
            smoothed = avg / (1 - SMOOTHING ** (i + 1))  # bias correction of the zero start
            result.lrs.append(lr)
            result.raw.append(loss)
            result.losses.append(smoothed)
            best = min(best, smoothed)
            if trainer.verbose and (i + 1) % max(1, round(PROGRESS_EVERY * num_iter)) == 0 and i + 1 < num_iter:
                print(f"lr-find: step {i + 1:,}/{num_iter:,}  lr {lr:.3g}  smoothed loss {smoothed:.4g}",
                      file=sys.stderr, flush=True)
            if not math.isfinite(smoothed) or smoothed > diverge * best:
                result.stop = f"diverged at lr {lr:.3g} (smoothed loss > {diverge:g} x its minimum)"
                break
    finally:
        model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
    result.suggestion = steepest(result.lrs, result.losses)
    return result


def batches(loader: Any) -> Iterator[Batch]:
    """The training batches, epoch after epoch, for as long as the test needs them."""
    epoch = 0
    while True:
        epoch += 1
        loader.set_epoch(epoch)
        yield from loader


def updates(trainer: Trainer, stream: Iterator[Batch]) -> Iterator[float]:
    """One optimizer step per item, as ``train`` makes them (mixing, accumulation, clipping,
    precision); yields the step's mean loss."""
    autocast, total = trainer.precision.autocast(), 0.0
    for x, y, share, first, last in micro_batches(stream, trainer.cfg.accum_steps):
        x, target = trainer.mix(x, y)
        if trainer.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, _ = train_step(trainer.net, x, target, loss_fn=trainer.loss_fn, optimizer=trainer.optimizer,
                             autocast=autocast, scaler=trainer.scaler, clip_grad=trainer.cfg.clip_grad,
                             loss_scale=share, zero_grad=first, update=last)
        total = (0.0 if first else total) + float(loss) * share
        if last:
            yield total


def steepest(lrs: list[float], losses: list[float]) -> float | None:
    """The lr where the smoothed loss falls fastest per decade of lr, leaving out the first
    SKIP_START points and the last SKIP_END (torch-lr-finder's defaults). The slope is taken
    across WINDOW decades on each side: from point to point, the wobble of a barely moving loss
    at tiny lrs can look steeper than the real descent (seen on a CIFAR-10 subset)."""
    finite = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
    if finite < 3:
        return None
    x = np.log10(np.asarray(lrs[:finite], dtype=np.float64))
    y = np.asarray(losses[:finite], dtype=np.float64)
    w = max(1, round(WINDOW / max(x[1] - x[0], 1e-12)))
    idx = np.arange(max(SKIP_START, w), finite - max(SKIP_END, w))
    if idx.size == 0:
        return None
    slope = (y[idx + w] - y[idx - w]) / (x[idx + w] - x[idx - w])
    return float(lrs[int(idx[np.argmin(slope)])])


def plot(result: RangeTest, path: Path, recipe_lr: float | None = None) -> None:
    """Smoothed loss against lr (log scale), the suggestion marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional heavy import, plots only
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, label="smoothed training loss")
    if result.suggestion is not None:
        i = result.lrs.index(result.suggestion)
        ax.plot([result.suggestion], [result.losses[i]], "o", color="tab:red", markersize=8,
                label=f"suggested lr {result.suggestion:.3g} (steepest descent)")
    if recipe_lr:
        ax.axvline(recipe_lr, color="tab:gray", linestyle="--", label=f"configured lr {recipe_lr:g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = [v for v in result.losses if math.isfinite(v)]
    if finite:  # the blow-up at the end would squash the interesting part
        ax.set_ylim(min(finite) * 0.95, min(max(finite), 2.0 * finite[0]) * 1.05)
    ax.set_title("learning-rate range test")
    ax.legend(loc="best", fontsize=8)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
