"""Optimizer and learning-rate schedule from a resolved RunConfig.

Schedules come from ``torch.optim.lr_scheduler`` and are stepped once per optimizer step, so a
run's shape does not depend on its epoch count or batch size; ``plateau`` alone also reads the
evaluation loss once per evaluation (:func:`step_on_metric`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Union

import torch
from torch import nn
from torch.optim import lr_scheduler as sched

from ..config import RunConfig
from .finetune import freeze_plan, head_module, is_finetune

Scheduler = sched.LRScheduler
ONECYCLE_WARMUP = 0.25  # fraction of the run spent rising to the peak when --warmup-epochs is unset
WARMUP_START = 0.01  # linear warmup starts at 1% of the peak (Goyal et al. 2017, arXiv:1706.02677)
STEP_MILESTONES = (0.5, 0.75)  # x0.1 at half and three quarters of the run (He et al. 2015, 4.2)
# "divided by 10 when the error plateaus" (He et al. 2015, 3.4); a patience of 2 evaluations (the
# lr drops on the third without a lower loss), not torch's 10, so that runs of 10-30 epochs see it act.
PLATEAU_FACTOR = 0.1
PLATEAU_PATIENCE = 2


def param_groups(model: nn.Module, cfg: RunConfig | float) -> list[dict[str, Any]]:
    """Optimizer param groups of a run (``cfg``) or of a plain weight decay (a float).

    Weight decay on conv and linear weights only: decaying BatchNorm scales and biases only
    hurts (Goyal et al. 2017; "no bias decay", He et al. 2018, arXiv:1812.01187). A fine-tuning
    run splits head and backbone too (backbone lr = lr * --backbone-lr-mult); its frozen
    parameters are included (they unfreeze later) and skipped while gradient-free, and its
    groups carry a ``name`` for logs and tests."""
    decay = cfg.weight_decay if isinstance(cfg, RunConfig) else cfg
    if not (isinstance(cfg, RunConfig) and is_finetune(cfg)):
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.ndim > 1], "weight_decay": decay},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    head = {id(p) for p in head_module(model).parameters()}
    groups = []
    for part, lr in (("head", cfg.lr), ("backbone", cfg.lr * freeze_plan(cfg).backbone_lr_mult)):
        mine = [p for p in model.parameters() if (id(p) in head) == (part == "head")]
        for name, params, wd in ((part, [p for p in mine if p.ndim > 1], decay),
                                 (part + ".no_decay", [p for p in mine if p.ndim <= 1], 0.0)):
            if params:
                groups.append({"name": name, "params": params, "lr": lr, "weight_decay": wd})
    return groups


def build_optimizer(params: Iterable[Any], cfg: RunConfig) -> torch.optim.Optimizer:
    """sgd: momentum 0.9 with Nesterov; adam and adamw: torch's defaults (betas 0.9, 0.999).
    ``params``: parameters or param groups (their own "weight_decay" and "lr" win)."""
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Plateau:
    """``--schedule plateau``: ReduceLROnPlateau on the evaluation loss, after an optional linear
    warmup that is stepped per optimizer step like the other schedules."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int) -> None:
        self.warmup_steps, self.steps = warmup, 0
        self.warmup = sched.LinearLR(optimizer, start_factor=WARMUP_START, total_iters=warmup) if warmup else None
        self.plateau = sched.ReduceLROnPlateau(optimizer, factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE)

    def step(self) -> None:
        if self.warmup is not None and self.steps < self.warmup_steps:
            self.warmup.step()
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "plateau": self.plateau.state_dict(),
                "warmup": self.warmup.state_dict() if self.warmup is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.plateau.load_state_dict(state["plateau"])
        if self.warmup is not None and state.get("warmup"):
            self.warmup.load_state_dict(state["warmup"])


AnySchedule = Union[Scheduler, Plateau]


def step_on_metric(scheduler: AnySchedule, record: Mapping[str, Any]) -> None:
    """After an evaluation: ``plateau`` steps on the validation loss (the metrics line's
    ``val_loss``); the test split never drives a schedule."""
    loss = record.get("val_loss")
    if isinstance(scheduler, Plateau) and loss is not None:
        scheduler.plateau.step(loss)


def run_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    """Optimizer steps in the whole run: ``cfg.epochs`` epochs, or fewer with --max-steps."""
    total = cfg.epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps else total


def epoch_steps(cfg: RunConfig, epoch: int, steps_per_epoch: int) -> int:
    """Optimizer steps epoch ``epoch`` (1-based) trains: all of them, but for a last epoch that
    --max-steps ends early."""
    return max(0, min(steps_per_epoch, run_steps(cfg, steps_per_epoch) - (epoch - 1) * steps_per_epoch))


def with_length(cfg: RunConfig, epochs: float, steps_per_epoch: int) -> RunConfig:
    """``cfg`` for a run of ``epochs`` epochs, a fraction ending the last one at a step
    (``max_steps``), as the trainer sets it; a warmup the length cannot hold becomes half of it."""
    warmup = cfg.warmup_epochs if cfg.warmup_epochs is None or cfg.warmup_epochs < epochs else epochs / 2
    whole = math.ceil(epochs - 1e-9)
    steps = round(epochs * steps_per_epoch)
    return cfg.replace(epochs=whole, warmup_epochs=warmup,
                       max_steps=steps if steps < whole * steps_per_epoch else None)


def plan_text(epochs: int, steps: int, steps_per_epoch: int) -> str:
    """``11 epochs``, or ``8.60 epochs (4,034 steps)`` where the last epoch ends early."""
    if steps >= epochs * steps_per_epoch:
        return f"{epochs} epoch{'s' * (epochs != 1)}"
    return f"{steps / steps_per_epoch:.2f} epochs ({steps:,} steps)"


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int) -> AnySchedule:
    """The per-step schedule for ``cfg.epochs`` epochs of ``steps_per_epoch`` optimizer steps
    (ending at --max-steps where that comes first)."""
    total = max(1, run_steps(cfg, steps_per_epoch))
    warmup = min(total - 1, round((cfg.warmup_epochs or 0) * steps_per_epoch))
    if cfg.schedule == "plateau":
        return Plateau(optimizer, warmup)
    if cfg.schedule == "onecycle" and total >= 3:  # its two phases need two steps or more each
        rise = warmup if cfg.warmup_epochs is not None else round(ONECYCLE_WARMUP * total)
        rise = min(max(rise, 2), total - 1)
        return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                total_steps=total, pct_start=rise / total)
    main_steps = total - warmup
    if cfg.schedule == "cosine":
        main: Scheduler = sched.CosineAnnealingLR(optimizer, T_max=main_steps)
    elif cfg.schedule == "linear":  # to zero at the last step: the budgeted-training schedule
        # (Li et al. 2020, arXiv:1905.04753; airbench's triangle ends at 0 too)
        main = sched.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=main_steps)
    elif cfg.schedule == "step":
        milestones = [max(1, round(f * total) - warmup) for f in STEP_MILESTONES]
        main = sched.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    else:
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=WARMUP_START, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first group (the one with weight decay: the bulk of the net)."""
    return float(optimizer.param_groups[0]["lr"])
