"""What a run computes with, set up once for ``train``, ``--dry-run``, the --time-budget plan and
``lr-find``: the resolved config, device and precision, the data, the prepared model (pretrained
weights loaded, frozen for epoch 1), the length in optimizer steps and the speed setting.

A dry run and a real run build their :class:`Run` here alike, so the probe's cache key and the
run length it is asked about are the same in both (a frozen net trains faster than a whole one).
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from .. import models, pretrained, probe
from ..config import RunConfig
from ..data import build_loaders, tta_for
from ..data.augment import TTA
from ..data.progressive import check_progressive
from ..errors import UserError
from ..models.summary import check_input
from ..runtime import Precision, resolve_precision
from ..specs import DatasetSpec
from ..steps import timing_step
from . import distributed, finetune
from .optim import plan_text, run_steps, with_length


@dataclass(eq=False)
class Run:
    """One run's setting: ``cfg``, ``device`` and ``precision`` from the start, the rest filled in
    by :func:`build_run` and :func:`choose_runtime`."""

    cfg: RunConfig
    device: torch.device
    precision: Precision  # checked at the start; --precision auto: chosen by choose_runtime
    rank: int = 0
    world_size: int = 1
    notes: list[str] = field(default_factory=list)  # printed under the run's header
    choice: probe.Choice | None = None  # precision, memory format and threads in use, and why
    threads_forced: int | None = None  # --threads (or the resumed run's), before the probe chose
    loaders: Any = None
    tta: TTA | None = None  # the views --tta averages
    model_args: dict[str, Any] = field(default_factory=dict)  # recorded in the checkpoint
    model: nn.Module | None = None
    fresh_modules: list[str] = field(default_factory=list)  # trained even while frozen
    transfer_notes: list[str] = field(default_factory=list)  # what fine-tuning loaded and froze
    sched_steps: int = 0  # optimizer steps per epoch (--accum-steps: one per accumulated batch)
    # --max-steps: the epochs it reaches into; with --time-budget, the most the plan may hold
    step_cap: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def spec(self) -> DatasetSpec:
        return self.loaders.spec

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.spec.in_chans, self.spec.img_size, self.spec.img_size)

    @property
    def channels_last(self) -> bool:
        return bool(self.choice.channels_last) if self.choice else bool(self.cfg.channels_last)

    def probe_steps(self) -> int:
        """The run's length as the probe weighs its own cost against it: batches, not updates."""
        return run_steps(self.cfg, self.sched_steps) * self.cfg.accum_steps

    def set_epochs(self, epochs: float) -> None:
        """Change the run's length in epochs; a fraction ends the last epoch early, at a step
        (``max_steps``). A warmup the new length cannot hold becomes half of it."""
        self.cfg = with_length(self.cfg, epochs, self.sched_steps)

    @property
    def planned_epochs(self) -> float:
        """The run's length in epochs, a fraction where --max-steps ends the last one early."""
        return run_steps(self.cfg, self.sched_steps) / self.sched_steps

    def plan_text(self) -> str:
        return plan_text(self.cfg.epochs, run_steps(self.cfg, self.sched_steps), self.sched_steps)


def build_run(run: Run, source: Any = None) -> Run:
    """Fill in ``run``'s data, model and length: seeded, the data read (with pretrained weights,
    at their preprocessing), checked against the flags, the model built and prepared for epoch 1
    on its device. ``source``: data handed over in Python."""
    cfg = run.cfg
    seed_everything(cfg.seed)
    # fine-tuning: the data takes the weights' own preprocessing (size, mean, std)
    weights = pretrained.weights_preprocessing(cfg) if cfg.pretrained else None
    run.loaders = build_loaders(cfg, run.device, rank=run.rank, world_size=run.world_size,
                                preprocessing=weights, source=source)
    run.tta = tta_for(cfg.dataset, run.spec)
    check_setup(cfg, run.loaders)
    head = {} if cfg.drop_rate is None else {"drop_rate": cfg.drop_rate}
    run.model_args = {"num_classes": run.spec.num_classes, "in_chans": run.spec.in_chans,
                      **head, **cfg.model_args}
    model = models.create_model(cfg.model, **run.model_args)
    if cfg.sync_bn and run.world_size > 1:  # before freezing, which sets BatchNorm modes
        model = distributed.convert_sync_batchnorm(model, run.device)
    prepared = finetune.prepare(model, cfg, run.spec)
    run.fresh_modules = prepared.fresh_modules
    run.transfer_notes = list(prepared.notes)
    run.model = model.to(run.device)
    run.sched_steps = math.ceil(len(run.loaders.train) / cfg.accum_steps)
    run.step_cap = cfg.max_steps if cfg.max_steps and not cfg.resume else None
    if run.step_cap:
        run.set_epochs(min(cfg.epochs, run.step_cap / run.sched_steps))
    return run


def probe_choice(run: Run, reprobe: bool = False) -> probe.Choice:
    """The probe's choice for ``run`` (timed now, or read from its cache under the run's network
    key): what a dry run reports and the trainer trains with."""
    cfg = run.cfg
    forced = cfg.threads if run.choice is None else run.threads_forced
    return probe.choose(run.model, run.input_shape, run.loaders.train.batch_size, run.device,
                        precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile,
                        network=probe.network_key(cfg, run.model_args), make_step=timing_step,
                        run_steps=run.probe_steps(), threads=forced,
                        reprobe=reprobe or (run.choice is None and cfg.reprobe))


def choose_runtime(run: Run, reprobe: bool = False) -> None:
    """--precision, channels_last and --threads: forced by flags, else measured on this machine
    (or read from the probe's cache; ``reprobe``: measured again). Rank 0 measures and every
    rank uses its choice; the thread count is recorded in the config (it orders float sums)."""
    cfg = run.cfg
    choice = None
    if run.is_main:
        shape, batch = run.input_shape, run.loaders.train.batch_size
        steps = run.probe_steps()
        choice = probe_choice(run, reprobe)
        if run.choice is not None:  # a re-probe mid-run: the policy is this process's already
            choice.wait_policy = run.choice.wait_policy
        elif run.device.type == "cpu" and run.world_size == 1:
            wait = {"model": cfg.model, "model_args": run.model_args, "input_size": list(shape),
                    "batch_size": batch, "precision": choice.precision, "channels_last": choice.channels_last}
            run_s = steps * batch / choice.images_per_s if choice.images_per_s else None
            choice.wait_policy = probe.wait_policy_for_run(choice, wait, run_s, force=cfg.reprobe)
    if run.choice is None:
        run.threads_forced = cfg.threads
    run.choice = distributed.broadcast_object(choice)
    run.precision = resolve_precision(run.choice.precision, run.device)
    if run.choice.threads and run.device.type == "cpu":
        torch.set_num_threads(run.choice.threads)
        run.cfg = run.cfg.replace(threads=run.choice.threads)


def recheck_choice(run: Run, speed: float, log: Callable[[str], None]) -> None:
    """A cached choice RECHECK_RATIO off the run's own first steps is measured again (as
    bounded as any probe) and its entry rewritten; the new setting trains from here on."""
    was = run.choice
    if not distributed.broadcast_object(run.is_main and was is not None and probe.recheck(was, speed)):
        return
    log(f"speed: the cache said {was.images_per_s:,.0f} img/s, the first steps ran "
        f"{speed:,.0f} img/s: probing again")
    choose_runtime(run, reprobe=True)
    if run.channels_last != was.channels_last:
        run.model.to(memory_format=torch.channels_last if run.channels_last else torch.contiguous_format)
    log(f"speed: {run.choice.describe()}")


def as_config(cfg: RunConfig | Mapping[str, Any] | None, overrides: Mapping[str, Any]
              ) -> tuple[RunConfig, set[str] | None]:
    """A RunConfig and the set of fields the caller set (None: those differing from defaults)."""
    if cfg is None or isinstance(cfg, Mapping):
        data = {**dict(cfg or {}), **overrides}
        return RunConfig.from_dict(data), set(data)
    if not isinstance(cfg, RunConfig):
        raise UserError(f"train() takes a RunConfig, a dict or None, not {type(cfg).__name__}")
    RunConfig.from_dict(overrides)  # validates the names
    defaults = RunConfig()
    changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(defaults, f.name)}
    return cfg.replace(**overrides), changed | set(overrides)


def check_setup(cfg: RunConfig, loaders: Any) -> None:
    """What the data and the flags must agree on before a run starts (the trainer's setup and
    --dry-run both ask): a split to watch for --early-stop and plateau, room for --min-img-size."""
    if loaders.val is None and (cfg.early_stop or cfg.schedule == "plateau"):
        what = "--early-stop" if cfg.early_stop else "--schedule plateau"
        raise UserError(f"{what} needs a validation split to watch; drop --val-size 0 or {what}")
    check_progressive(cfg.min_img_size, cfg.progressive_until, loaders.spec.img_size,
                      bool(getattr(loaders.train, "in_memory", False)))
    batches = len(loaders.train)  # per epoch, on this process
    if cfg.accum_steps > batches:
        images = loaders.train.num_samples
        raise UserError(f"--accum-steps {cfg.accum_steps} makes an effective batch of "
                        f"{cfg.accum_steps * cfg.batch_size:,} images, more than the {images:,} training "
                        f"images ({batches} batch(es) of {cfg.batch_size} per epoch); use --accum-steps "
                        f"{batches} or fewer")
    spec = loaders.spec  # the net takes its smallest input, and its largest fits in memory
    for side in sorted({spec.img_size, cfg.min_img_size or spec.img_size}):
        flag = "--min-img-size" if side != spec.img_size else "--img-size"
        check_input(cfg.model, (spec.in_chans, side, side), batch=loaders.train.batch_size, flag=flag,
                    model_args=dict(cfg.model_args))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
