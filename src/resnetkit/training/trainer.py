"""The training loop: device, precision, schedule, logging, checkpoints, resume and the report.

The steps themselves live in :mod:`resnetkit.steps`. Per epoch the trainer reads the device twice at
most per ``sync_every`` batches, or per REFRESH_S with a progress bar (progress and the
finite-loss check) and writes, in order: the
best checkpoint (when the validation accuracy improved), the last checkpoint, the metrics line
and the resume state, each atomically. The test split is read once, after the last epoch, on the
checkpoint the validation split chose (:mod:`resnetkit.data.splits`). The resume state carries the metrics history, so a run
killed between two of those writes resumes from the last complete epoch and rewrites
metrics.jsonl to match it.

Data parallelism (:mod:`.distributed`): under torchrun each process runs a Trainer with its
``rank``; ``self.net`` (the DDP wrapper that trains) is kept apart from ``self.model`` (what is
saved and evaluated), only rank 0 writes files and prints, and every number that is logged or
decides something (losses, accuracies, early stop, divergence) is reduced over all ranks first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import sys
import time
import typing
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import interpret, models, pretrained, probe
from .. import report as reports
from .. import report_html
from .._io import append_jsonl, ensure_dir, remove_stale_temps, write_json_atomic, write_text_atomic
from ..config import RunConfig, json_fits, recorded_config
from ..data import build_loaders, tta_for
from ..data.augment import TTA
from ..data.datasets import resolve_data_dir
from ..data.progressive import check_progressive, epoch_img_size, epoch_img_sizes
from ..errors import UserError, first_line
from ..models.summary import check_input
from .. import checkpoint as ckpt
from . import distributed, finetune, run_folder, sampler, tb
from .budget import Budget, Costs, SizeSpeeds, format_duration, plan_sizes, process_age
from .ema import WeightEma
from .mix import Mixer
from .optim import (Plateau, build_optimizer, build_scheduler, current_lr, epoch_steps, param_groups,
                    plan_text, run_steps, step_on_metric, with_length)
from .recipes import describe, resolve_config
from ..runtime import cpu_threads, resolve_device, resolve_precision, sync
from ..steps import EvalOutput, evaluate_batches, micro_batches, sync_context, timing_step, train_step

Callback = Callable[["Trainer", dict[str, Any]], None]
SYNC_EVERY = 25  # batches between host reads of the running loss (progress bar, finite check)
# ... and, while a progress bar is shown, at most this many seconds between reads: a slow net's
# 25 batches can take a minute, and a bar that sits still looks hung. The clock is read on the
# host, so a step costs no extra device sync; a read costs one, at most twice a second.
REFRESH_S = 0.5
FIRST_STEPS = 30  # --time-budget refits the epochs after this many steps of epoch 1
# ... to no less than this share of the plan: a short window that a passing load slowed (e.g.
# another process's threads on the same cores: 18x measured) must not end the run after epoch 1;
# the end of epoch 1, a whole epoch's measure, may shrink it further
FIRST_STEPS_LEAST = 0.5
# A cached probe's speed is from another hour, and a shared machine drifts (the same 28 px epoch
# took 19 s in one run and 24 s in the next); --time-budget times the chosen setting afresh, for
# at most this long, unless the probe has just timed it
BUDGET_PROBE_S = 1.5
QUIET_REFIT = 0.05  # a refit within this share of the plan is made but not printed
MIN_REFIT = 0.002  # nor made at all within this share (a few steps: noise, and a replay of the schedule)
# Changing these while resuming cannot change the numbers, only where and how fast they come.
# Precision and memory format too: a run probed on one CPU may continue on another.
RESUME_MAY_CHANGE = ("device", "workers", "data_dir", "download", "resume", "precision", "channels_last",
                     "reprobe")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# Everything the trainer writes into a run folder atomically (their temp files are .NAME.*.tmp).
RUN_FILES = (ckpt.BEST, ckpt.LAST, ckpt.STATE, "metrics.jsonl", "config.json", "classes.json",
             "class_indices.json", "report.json", "report.html", "curves.png", "confusion.png",
             "grad_norms.png")


@dataclass
class TrainResult:
    run_dir: Path
    best_metrics: dict[str, Any]  # the metrics line of the chosen epoch (highest val accuracy; the
    # last epoch with --val-size 0)
    last_metrics: dict[str, Any]
    history: list[dict[str, Any]]  # one metrics line per epoch, as in metrics.jsonl
    config: RunConfig  # resolved: every recipe value filled in
    report: dict[str, Any]  # report.json
    stopped_early: bool = False
    wall_time_s: float = 0.0
    test_metrics: dict[str, Any] = field(default_factory=dict)  # top1, top5, loss of the one test pass

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / ckpt.BEST


@dataclass
class _Best:
    metrics: dict[str, Any] = field(default_factory=dict)
    bad_evals: int = 0  # evaluations since the last improvement (--early-stop patience)

    def improves(self, record: Mapping[str, Any]) -> bool:
        if not self.metrics:
            return True
        a, b = record, self.metrics
        return (a["val_acc"], -a["val_loss"]) > (b["val_acc"], -b["val_loss"])

    def beats_accuracy(self, record: Mapping[str, Any]) -> bool:
        return not self.metrics or record["val_acc"] > self.metrics["val_acc"]


def train(cfg: RunConfig | Mapping[str, Any] | None = None, *, callbacks: Sequence[Callback] = (),
          verbose: bool = True, source: Any = None, **overrides: Any) -> TrainResult:
    """Train a model; see ``resnetkit train --help`` for every option.

    ``cfg``: a RunConfig, a dict of its fields, or None; keyword overrides win over both, and the
    recipe fills whatever is left unset. ``callbacks`` are called as ``cb(trainer, record)``
    after each epoch, once everything of that epoch is saved. ``source``: data handed over in
    Python (:mod:`resnetkit.training.api` builds it from arrays or a Dataset).
    """
    config, explicit = as_config(cfg, overrides)
    if config.resume:
        config, explicit = resume_config(config, explicit)
    world = distributed.launched_world_size()
    if world == 1:
        if config.nproc > 1:
            raise UserError(f"nproc={config.nproc}: data-parallel training runs one process per device; "
                            f"start it with 'resnetkit train --nproc {config.nproc} ...' or "
                            f"'torchrun --nproc-per-node {config.nproc} -m resnetkit train ...'")
        return Trainer(config, explicit=explicit, callbacks=callbacks, verbose=verbose, source=source).fit()
    config = config.replace(nproc=distributed.checked_nproc(config.nproc, world, bool(config.resume)))
    with distributed.process_group(resolve_device(config.device)) as ctx:
        return Trainer(config, explicit=explicit, callbacks=callbacks, verbose=verbose,
                       rank=ctx.rank, world_size=ctx.world_size).fit()


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


def resume_config(cfg: RunConfig, explicit: set[str] | None) -> tuple[RunConfig, set[str]]:
    """The saved config of the run folder ``cfg.resume``; a resumed run continues it unchanged."""
    run_dir = Path(cfg.resume)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        what = "is not a folder" if run_dir.exists() else "folder not found"
        raise UserError(f"--resume {run_dir}: {what}; pass the run folder (--out) of an earlier 'resnetkit train'")
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no config.json there; pass the folder of an earlier run")
    saved = recorded_config(read_run_config(path))
    explicit = explicit if explicit is not None else set()
    changed = sorted(k for k in explicit - set(RESUME_MAY_CHANGE)
                     if getattr(cfg, k) != getattr(saved, k))
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise UserError(f"--resume continues {run_dir} with its saved config, so {flags} cannot change; "
                        f"to train differently start a new run with --config {path} --out NEW_DIR")
    keep = {k: getattr(cfg, k) for k in RESUME_MAY_CHANGE if k in explicit}
    resolved = saved.replace(**{**keep, "out": str(run_dir), "resume": str(run_dir)})
    return resolved, {f.name for f in dataclasses.fields(RunConfig)}


def read_run_config(path: Path) -> dict[str, Any]:
    """A run's config.json, refused in one line when it is not what a run writes: a resumed run
    must continue with exactly the values it started with, none dropped or misread."""
    damaged = "the run cannot be continued as it was configured; repair the file or start a new run with another --out"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"--resume: {path} is not valid JSON (line {e.lineno}, column {e.colno}: "
                        f"{e.msg}); {damaged}") from None
    except (OSError, ValueError) as e:  # unreadable, or not UTF-8 text
        raise UserError(f"--resume: cannot read {path} ({first_line(e)}); {damaged}") from None
    if not isinstance(data, dict):
        raise UserError(f"--resume: {path} holds a JSON {type(data).__name__}, not an object of "
                        f"config keys; {damaged}")
    hints = typing.get_type_hints(RunConfig)
    unknown = sorted(k for k in data if k not in hints)
    wrong = [f"{k}={v!r:.40}" for k, v in data.items() if k in hints and not json_fits(v, hints[k])]
    if unknown or wrong:
        what = "; ".join(([f"unknown key(s) {', '.join(unknown)} (another resnetkit version wrote it, or "
                           f"it was edited)"] if unknown else []) +
                         ([f"wrong type(s): {', '.join(wrong)}"] if wrong else []))
        raise UserError(f"--resume: {path} has {what}; {damaged}")
    return data


def line_epoch(line: str) -> int | None:
    """The epoch of a metrics.jsonl line; None when the line is not one."""
    try:
        epoch = json.loads(line).get("epoch")
    except (ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


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


def rng_state() -> dict[str, Any]:
    """Every global generator, in types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Owns one run: ``Trainer(cfg).fit() -> TrainResult``."""

    def __init__(self, cfg: RunConfig, *, explicit: Iterable[str] | None = None,
                 callbacks: Sequence[Callback] = (), verbose: bool = True,
                 rank: int = 0, world_size: int = 1, source: Any = None) -> None:
        self.cfg = resolve_config(cfg, explicit)
        self.source = source
        self.rank, self.world_size = rank, world_size
        distributed.check_batch_size(self.cfg.batch_size, world_size)
        self.is_main = rank == 0
        self.verbose = verbose and self.is_main
        self.callbacks = list(callbacks)
        self.device = resolve_device(self.cfg.device)
        if world_size > 1:  # cuda -> this process's GPU
            self.device = distributed.rank_device(self.device)
        self.precision = resolve_precision(self.cfg.precision, self.device)  # checked now; auto: setup
        self.choice: probe.Choice | None = None  # precision, memory format and threads in use, and why
        self.threads_forced: int | None = None  # --threads (or the resumed run's), before the probe chose
        # --time-budget fits the epochs of a new run; a resumed run keeps the epochs it recorded
        self.budget = Budget.start(self.cfg.time_budget) if self.cfg.time_budget and not self.cfg.resume else None
        self.notes: list[str] = []  # printed under the run's header
        self.eval_seconds: list[float] = []  # each evaluation's wall time (--time-budget's costs)
        self.test_interpretation: interpret.Interpretation | None = None  # the test pass, per sample (report.html)
        self.train_seconds: list[tuple[int, float]] = []  # (input size, seconds) of each epoch (--time-budget)
        self.history: list[dict[str, Any]] = []
        self.best = _Best()
        self.start_epoch = 0  # epochs already done (resume)
        self.wall_before = 0.0  # seconds spent before a resume
        self.lock: run_folder.RunFolderLock | None = None  # held on rank 0 for the whole of fit()
        # rank 0's choice: the default folder name carries a timestamp
        self.run_dir = Path(distributed.broadcast_object(
            str(self.cfg.resume or self.cfg.out or default_run_dir(self.cfg))))

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        # fine-tuning: the data takes the weights' own preprocessing (size, mean, std)
        weights = pretrained.weights_preprocessing(cfg) if cfg.pretrained else None
        self.loaders = build_loaders(cfg, self.device, rank=self.rank, world_size=self.world_size,
                                     preprocessing=weights, source=self.source)
        self.spec = self.loaders.spec
        self.tta = tta_for(cfg.dataset, self.spec)  # the views --tta averages
        check_setup(cfg, self.loaders)
        head = {} if cfg.drop_rate is None else {"drop_rate": cfg.drop_rate}  # recorded in the checkpoint
        self.model_args = {"num_classes": self.spec.num_classes, "in_chans": self.spec.in_chans,
                           **head, **cfg.model_args}
        model = models.create_model(cfg.model, **self.model_args)
        if cfg.sync_bn and self.world_size > 1:  # before freezing, which sets BatchNorm modes
            model = distributed.convert_sync_batchnorm(model, self.device)
        prepared = finetune.prepare(model, cfg, self.spec)
        self.fresh_modules = prepared.fresh_modules
        self.transfer_notes = list(prepared.notes)
        model.to(self.device)
        # optimizer steps per epoch (--accum-steps: one per accumulated batch)
        self.sched_steps = math.ceil(len(self.loaders.train) / cfg.accum_steps)
        # --max-steps: the epochs it reaches into; with --time-budget, the most the plan may hold
        self.step_cap = cfg.max_steps if cfg.max_steps and not cfg.resume else None
        if self.step_cap:
            self.set_epochs(min(cfg.epochs, self.step_cap / self.sched_steps))
        self.choose_runtime(model)
        self.transfer_notes += [n for n in (probe.precision_note(self.precision.name, self.device),) if n]
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = build_optimizer(param_groups(model, cfg), cfg)  # + head/backbone
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]  # before a schedule moves them
        if self.budget is not None:
            self.fit_budget(model)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.sched_steps)
        self.scaler = self.precision.grad_scaler()
        weight = sampler.setup_imbalance(cfg, self.loaders.train, self.spec.num_classes, self.device)
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        self.mix = Mixer(cfg, self.spec.num_classes)  # --mixup / --cutmix; identity when off
        self.ema = WeightEma(model, cfg.ema) if cfg.ema else None
        self.net: nn.Module = self.wrap(model)  # trains; checkpoints always save self.model
        # Evaluation runs the plain module: ranks hold different numbers of eval samples, and
        # DDP's forward would wait for the others (buffer broadcast) on every batch.
        self.eval_net: nn.Module = self.net if self.world_size == 1 else (
            torch.compile(model) if cfg.compile else model)

    def choose_runtime(self, model: nn.Module, reprobe: bool = False) -> None:
        """--precision, channels_last and --threads: forced by flags, else measured on this machine
        (or read from the probe's cache; ``reprobe``: measured again). Rank 0 measures and every
        rank uses its choice; the thread count is recorded in the config (it orders float sums)."""
        cfg, spec = self.cfg, self.spec
        choice = None
        if self.is_main:
            shape, batch = (spec.in_chans, spec.img_size, spec.img_size), self.loaders.train.batch_size
            steps = run_steps(cfg, self.sched_steps) * cfg.accum_steps
            forced = cfg.threads if self.choice is None else self.threads_forced
            choice = probe.choose(model, shape, batch, self.device, precision=cfg.precision,
                                  channels_last=cfg.channels_last, compile=cfg.compile,
                                  network=probe.network_key(cfg, self.model_args), make_step=timing_step,
                                  run_steps=steps, threads=forced,
                                  reprobe=reprobe or (self.choice is None and cfg.reprobe))
            if self.choice is not None:  # a re-probe mid-run: the policy is this process's already
                choice.wait_policy = self.choice.wait_policy
            elif self.device.type == "cpu" and self.world_size == 1:
                wait = {"model": cfg.model, "model_args": self.model_args, "input_size": list(shape),
                        "batch_size": batch, "precision": choice.precision, "channels_last": choice.channels_last}
                run_s = steps * batch / choice.images_per_s if choice.images_per_s else None
                choice.wait_policy = probe.wait_policy_for_run(choice, wait, run_s, force=cfg.reprobe)
        if self.choice is None:
            self.threads_forced = cfg.threads
        self.choice = distributed.broadcast_object(choice)
        self.precision = resolve_precision(self.choice.precision, self.device)
        if self.choice.threads and self.device.type == "cpu":
            torch.set_num_threads(self.choice.threads)
            self.cfg = self.cfg.replace(threads=self.choice.threads)

    def recheck_cache(self, speed: float) -> None:
        """A cached choice RECHECK_RATIO off the run's own first steps is measured again (as
        bounded as any probe) and its entry rewritten; the new setting trains from here on."""
        was = self.choice
        if not distributed.broadcast_object(self.is_main and was is not None and probe.recheck(was, speed)):
            return
        self.log(f"speed: the cache said {was.images_per_s:,.0f} img/s, the first steps ran "
                 f"{speed:,.0f} img/s: probing again")
        self.choose_runtime(self.model, reprobe=True)
        if self.channels_last != was.channels_last:
            self.model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.log(f"speed: {self.choice.describe()}")

    # ------------------------------------------------------------------ --time-budget
    def fit_budget(self, model: nn.Module) -> None:
        """The first fit of --time-budget, from the probe's images/s: timed now unless the probe
        has just timed the chosen setting (not when it came from the cache or from flags)."""
        speed = None
        if self.is_main:
            spec, choice = self.spec, self.choice
            if choice is None:  # flags decided: the setting in use, untimed
                choice = probe.Choice(self.precision.name, self.channels_last, self.cfg.compile, "flag")
            speed = budget_speed(choice, model, (spec.in_chans, spec.img_size, spec.img_size),
                                 self.loaders.train.batch_size, self.device, self.cfg.compile)
        speed = distributed.broadcast_object(speed)
        self.speeds = SizeSpeeds(self.spec.img_size)
        self.speeds.record(self.spec.img_size, speed)
        try:
            first = self.budget.first_fit(self.costs(), self.cfg.eval_every, self.sched_steps)
        except UserError:
            c = self.choice
            if self.world_size > 1 or not (c.load or (c.spread or 0) >= probe.STABLE_SPREAD):
                raise
            first = self.refit_measured_again(model)  # never refused on a measurement made under load
        epochs = distributed.broadcast_object(self.capped(first))
        self.set_epochs(epochs)
        self.notes.append(f"budget {format_duration(self.budget.seconds)} -> {self.plan_text()} "
                          f"at ~{speed:,.0f} img/s")

    def refit_measured_again(self, model: nn.Module) -> float:
        """The first fit from the chosen setting timed again now; a budget still too short is
        refused with the speed measured and the load beside it."""
        spec, c = self.spec, self.choice
        before, start = probe.cpu_ticks(), time.perf_counter()
        again = probe.Choice(c.precision, c.channels_last, c.compile, "cache", c.images_per_s, threads=c.threads)
        speed = budget_speed(again, model, (spec.in_chans, spec.img_size, spec.img_size),
                             self.loaders.train.batch_size, self.device, False)
        load = probe.load_text(probe.other_load(before, probe.cpu_ticks(), time.perf_counter() - start))
        self.speeds.record(self.spec.img_size, speed, replace=True)
        note = f"measured twice, now at ~{speed:,.0f} img/s" + (f"; {load}" if load else "")
        return self.budget.first_fit(self.costs(), self.cfg.eval_every, self.sched_steps, measured=note)

    def costs(self) -> Costs:
        """--time-budget's cost model from the speeds measured so far (``self.speeds``)."""
        return budget_costs(self.cfg, self.loaders, self.tta, self.speeds,
                            self.budget.tail_s if self.budget else 0.0)

    def epoch_sizes(self, epochs: int) -> list[int]:
        """Each epoch's training input size in a run of ``epochs`` (--min-img-size)."""
        return epoch_img_sizes(epochs, self.spec.img_size, self.cfg.min_img_size, self.cfg.progressive_until)


    def capped(self, epochs: float) -> float:
        """A --time-budget plan held to the user's --max-steps, if any."""
        return min(epochs, self.step_cap / self.sched_steps) if self.step_cap else epochs

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

    def refit_budget(self, done: float, costs: Costs, why: str, least: float = 0.0) -> None:
        """Refit the epochs to what is left of the budget (``least`` of them at least); a new
        length rebuilds the schedule at the current step (so it still ends annealed) and
        rewrites config.json."""
        planned = self.planned_epochs
        epochs = distributed.broadcast_object(
            self.capped(max(least, self.budget.refit(planned, done, costs, self.cfg.eval_every,
                                                     self.sched_steps))))
        new, old = round(epochs * self.sched_steps), round(planned * self.sched_steps)
        if abs(new - old) < max(1.0, MIN_REFIT * old):  # each new plan replays the schedule so far
            return
        was = self.plan_text()
        self.set_epochs(epochs)
        if abs(epochs - planned) > QUIET_REFIT * planned:  # not every nudge
            self.log(f"budget {format_duration(self.budget.seconds)}: {why} -> {self.plan_text()} (was {was})")
        if self.is_main:
            write_json_atomic(self.run_dir / "config.json", self.saved_config())
        if isinstance(self.scheduler, Plateau):  # reads the val loss, not the length
            return
        steps_done = self.scheduler.last_epoch
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr
            group.pop("initial_lr", None)  # so the new schedule starts from the peak values
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.sched_steps)
        with warnings.catch_warnings():  # "scheduler stepped before optimizer": a replay, not a bug
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps_done):
                self.scheduler.step()

    def first_steps_check(self, step: int, since: float, images: int) -> None:
        """After the first steps of epoch 1: check a cached speed, refit from the loop's own images/s."""
        sync(self.device)
        speed = images / max(time.perf_counter() - since, 1e-9)
        self.recheck_cache(speed)
        if self.budget is None:
            return
        self.speeds.record(self.epoch_sizes(self.cfg.epochs)[0], speed, replace=True)  # the loop's own
        least = math.ceil(FIRST_STEPS_LEAST * self.planned_epochs * self.sched_steps) / self.sched_steps
        self.refit_budget(step / len(self.loaders.train), self.costs(),
                          f"first steps at ~{speed:,.0f} img/s", least=least)

    def epoch_end_check(self, epoch: int, train_seconds: float) -> None:
        """After each epoch: refit from the mean speed of the last RECENT epochs at each input size
        (the first whole epoch at a size replaces the first steps' estimate) and the last
        evaluation's seconds."""
        size = self.epoch_sizes(self.cfg.epochs)[epoch - 1]
        first_at_size = size not in {s for s, _ in self.train_seconds}
        self.train_seconds.append((size, train_seconds))
        if epoch >= self.cfg.epochs:
            return
        speed = self.loaders.train.num_samples / max(train_seconds, 1e-9)
        self.speeds.record(size, speed, replace=first_at_size)
        costs = self.costs()
        if self.eval_seconds:
            costs.eval_s = self.eval_seconds[-1]
        self.refit_budget(epoch, costs, f"epoch {epoch} at ~{speed:,.0f} img/s")

    @property
    def channels_last(self) -> bool:
        return bool(self.choice.channels_last) if self.choice else bool(self.cfg.channels_last)

    def runtime(self) -> dict[str, Any]:
        """report.json's "runtime": what this run computed with, and how that was chosen."""
        c = self.choice
        speeds = [h["images_per_s"] for h in self.history if h.get("images_per_s")]
        return {"device": str(self.device), "precision": self.precision.name,
                "channels_last": self.channels_last, "compile": self.cfg.compile,
                "threads": ((c.threads if c and c.threads else torch.get_num_threads())
                            if self.device.type == "cpu" else None),
                "images_per_s": c.images_per_s if c and c.images_per_s else
                (float(np.median(speeds)) if speeds else None),
                "train_images_per_s": float(np.median(speeds)) if speeds else None,
                "chosen_by": c.chosen_by if c else "flag", "reason": c.reason if c else "",
                "threads_chosen_by": (c.threads_by or c.chosen_by) if c else "flag",
                **probe.wait_record(c.wait_policy if c else None),
                "probe_spread": c.spread if c else None, "probe_load": c.load if c else "",
                "probe_cached": c.cached if c else False,
                "probe": c.measured if c else [], "probe_seconds": c.probe_seconds if c else None}

    def wrap(self, model: nn.Module) -> nn.Module:
        net = distributed.wrap_model(model, self.device) if self.world_size > 1 else model
        return torch.compile(net) if self.cfg.compile else net

    def start_run_dir(self) -> None:
        """A new run folder with config.json and classes.json, or the state of a resumed one."""
        if self.cfg.resume:
            if self.is_main:
                remove_stale_temps(self.run_dir, RUN_FILES)  # left by the kill being resumed from
            state = self.resume_state()
            if state is not None:
                self.restore(state)
                return
            # killed before the end of the first epoch: nothing to continue, start over in place
            if self.is_main:
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        elif self.is_main and any((self.run_dir / f).exists() for f in (ckpt.STATE, "metrics.jsonl")):
            raise UserError(f"{self.run_dir} already holds a run; continue it with --resume "
                            f"{self.run_dir} or choose another --out")
        if self.is_main:
            ensure_dir(self.run_dir, "run folder (--out)")
            remove_stale_temps(self.run_dir, RUN_FILES)  # left by a kill mid-write
            write_json_atomic(self.run_dir / "config.json", self.saved_config())
            report_html.write_class_files(self.run_dir, self.spec.classes)

    def resume_state(self) -> dict[str, Any] | None:
        """state.pt as rank 0 reads it, on every rank (other machines need not see the folder);
        None for a run killed before its first epoch was saved, which starts over."""
        path = self.run_dir / ckpt.STATE
        state = None
        if self.is_main and path.exists():
            state = ckpt.load_state(path)
            self.check_state(state, path)
        elif self.is_main:
            self.check_nothing_trained()
            self.log(f"--resume {self.run_dir}: no epoch of it was saved (no {ckpt.STATE}); starting over "
                     f"from epoch 1")
        return distributed.broadcast_object(state)

    def check_state(self, state: Mapping[str, Any], path: Path) -> None:
        """The entries restore() reads, and weights of this run's network: a state.pt copied
        from another run would otherwise fail half way through restoring."""
        missing = [k for k in ("optimizer", "scheduler", "rng", "best", "bad_evals", "history")
                   if k not in state]
        want = self.model.state_dict()
        got = state["model"] if isinstance(state["model"], dict) else {}
        fits = set(got) == set(want) and all(
            isinstance(got[k], torch.Tensor) and got[k].shape == want[k].shape for k in want)
        if missing or not fits:
            why = f"it lacks {', '.join(missing)}" if missing else f"its weights do not fit {self.cfg.model}"
            raise UserError(ckpt.unreadable_state(path, why))

    def check_nothing_trained(self) -> None:
        """Without state.pt, resuming starts over, which is right only when no epoch was finished:
        at most epoch 1 was being saved when the run was killed (the state is written last). A
        folder with a later epoch or a report lost its state.pt, and its files are kept."""
        metrics = self.run_dir / "metrics.jsonl"
        lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines() if metrics.is_file() else []
        epochs = [ckpt.recorded_epoch(self.run_dir / n) for n in (ckpt.BEST, ckpt.LAST)
                  if (self.run_dir / n).is_file()] + [line_epoch(line) for line in lines if line.strip()]
        if (self.run_dir / "report.json").exists() or any(e is None or e > 1 for e in epochs):
            found = [n for n in (ckpt.BEST, ckpt.LAST, "metrics.jsonl", "report.json")
                     if (self.run_dir / n).is_file()]
            raise UserError(f"--resume {self.run_dir}: its {ckpt.STATE} is missing, so the run cannot be "
                            f"continued, and starting over would overwrite its {', '.join(found)}; "
                            f"start a new run with another --out (--config {self.run_dir / 'config.json'} "
                            f"trains it the same way)")

    def saved_config(self) -> dict[str, Any]:
        """The config as config.json and the checkpoints record it: where the run lives, not how
        this process was started (a resumed run records the same config as an uninterrupted one).
        Precision and memory format are recorded as resolved: evaluate and resume compute as this
        run did."""
        cfg = self.cfg.replace(out=str(self.run_dir), resume=None, precision=self.precision.name,
                               channels_last=self.channels_last)
        if cfg.dataset != "digits" and self.source is None:  # where the data was, for evaluate and export
            cfg = cfg.replace(data_dir=str(resolve_data_dir(cfg.data_dir).resolve()))
        return cfg.to_dict()

    def state(self, epoch: int, wall: float) -> dict[str, Any]:
        return {"epoch": epoch, "model": ckpt.model_tensors(self.model),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "rng": rng_state(),
                "ema": self.ema.state_dict() if self.ema else None,
                "best": self.best.metrics, "bad_evals": self.best.bad_evals, "history": self.history,
                "wall_time_s": wall}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"])
        self.best = _Best(dict(state["best"]), int(state["bad_evals"]))
        self.history = [dict(h) for h in state["history"]]
        self.wall_before = float(state.get("wall_time_s", 0.0))
        if self.is_main:  # drop lines of an epoch whose state was never saved
            write_text_atomic(self.run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        try:
            if self.is_main:  # one training per folder: refused before any data is read or written
                self.lock = run_folder.acquire(self.run_dir)
                self.notes += [self.lock.note] if self.lock.note else []
            with cpu_threads(self.cfg.threads, self.device):
                return self._fit()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _fit(self) -> TrainResult:
        t0 = time.perf_counter()
        self.setup()
        self.start_run_dir()
        if self.cfg.tensorboard and self.is_main:  # after a resume's restore: it purges later epochs
            self.callbacks.insert(0, tb.TensorBoardLog(self.run_dir, self.start_epoch))
        where = (f"{self.world_size} processes on {torch.device(self.device).type}"
                 if self.world_size > 1 else str(self.device))
        self.log(f"run {self.run_dir}  ({where}, {self.precision.name}"
                 f"{', resumed after epoch %d' % self.start_epoch if self.start_epoch else ''})")
        self.log(describe(self.cfg))
        self.log(split_line(self.loaders))
        if self.choice is not None:
            self.log(f"speed: {self.choice.describe(forced=self.forced_by())}")
            if self.device.type == "cpu":
                self.log(probe.wait_line(self.choice.wait_policy))
        for line in self.notes:
            self.log(line)
        for line in self.transfer_notes:
            self.log(line)
        epoch = self.start_epoch
        try:
            while epoch < self.cfg.epochs and not self.out_of_patience():
                epoch += 1
                self.run_epoch(epoch, t0)
        except KeyboardInterrupt:
            self.log(f"interrupted; continue with: resnetkit train --resume {self.run_dir}")
            raise
        finally:
            # after a failed write (a full disk) the plots' own write error must not hide the first
            failing = sys.exc_info()[1] is not None
            with contextlib.suppress(UserError) if failing else contextlib.nullcontext():
                if self.is_main and self.history:
                    reports.plot_curves(self.history, self.run_dir / "curves.png")
                    if self.cfg.log_grad_norms:
                        reports.plot_grad_norms(self.history, self.run_dir / "grad_norms.png")
        stopped_early = epoch < self.cfg.epochs
        if stopped_early:
            self.log(f"early stop after epoch {epoch}: no better val accuracy in {self.best.bad_evals} "
                     f"evaluations")
        wall = self.wall_before + time.perf_counter() - t0
        report = self.final_report(wall)
        if self.is_main:  # report.html and the ECE, from best.safetensors as written
            report = report_html.write_run_report(self.run_dir, device=self.device, freeze=finetune.freeze_timeline,
                                                  interpretation=self.test_interpretation)
            # the whole process's seconds so far: start-up, data, probe, training, test pass, report
            report["evidence"] = {**report.get("evidence", {}), "process_s": round(process_age(), 3)}
            write_json_atomic(self.run_dir / "report.json", report)
            self.log(final_line(report, wall, self.run_dir / "report.json"))
        if self.budget is not None:
            used = self.budget.used()
            self.log(f"budget {format_duration(self.budget.seconds)}: {used:.1f} s used so far "
                     f"({used / self.budget.seconds:.0%}; the interpreter's exit follows)")
        test = {k: report.get(k) for k in ("top1", "top5", "loss", "num_samples")}
        return TrainResult(self.run_dir, dict(self.best.metrics), dict(self.history[-1]), self.history,
                           self.cfg, report, stopped_early, wall, test)

    def forced_by(self) -> str:
        """Where forced precision and memory format came from: a resumed run reads them from its
        config.json (as resolved when it started) unless a flag changed them."""
        if not self.cfg.resume:
            return "forced by flags"
        try:
            saved = json.loads((self.run_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
        kept = [k for k in ("precision", "channels_last") if saved.get(k) == getattr(self.cfg, k)]
        if len(kept) == 2:
            return "from the resumed run's config"
        if not kept:
            return "forced by flags"
        other = "channels_last" if kept[0] == "precision" else "precision"
        return f"{kept[0]} from the resumed run's config, {other} forced by a flag"

    def out_of_patience(self) -> bool:
        return bool(self.cfg.early_stop) and self.best.bad_evals >= self.cfg.early_stop

    def run_epoch(self, epoch: int, t0: float) -> dict[str, Any]:
        start = time.perf_counter()
        train = self.train_epoch(epoch)
        train_seconds = time.perf_counter() - start
        selecting = self.loaders.val is not None  # --val-size 0: nothing is chosen, the last epoch is
        do_eval = selecting and (epoch % self.cfg.eval_every == 0 or epoch == self.cfg.epochs)
        val = self.timed_evaluate(self.loaders.val).summary() if do_eval else {"loss": None, "acc": None}
        record = {"epoch": epoch, "train_loss": train.pop("train_loss"), "train_acc": train.pop("train_acc"),
                  "val_loss": val["loss"], "val_acc": val["acc"], "lr": train.pop("lr"),
                  "seconds": round(time.perf_counter() - start, 3), **train}
        self.history.append(record)
        step_on_metric(self.scheduler, record)  # --schedule plateau
        # the epoch line's "*": a strictly higher val accuracy; a tie broken by the loss moves
        # the checkpoint but is no new best accuracy
        new_best = do_eval and self.best.beats_accuracy(record)
        improved = do_eval and self.best.improves(record)
        if do_eval:
            self.best.bad_evals = 0 if improved else self.best.bad_evals + 1
        if improved or not selecting:
            self.best.metrics = dict(record)
        self.log(format_epoch(record, self.cfg.epochs, new_best, ema=self.ema is not None))
        if self.budget is not None:  # before saving: state.pt then holds the refitted schedule
            self.epoch_end_check(epoch, train_seconds)
        self.save(epoch, record, improved or not selecting, self.wall_before + time.perf_counter() - t0)
        for callback in self.callbacks:
            callback(self, record)
        return record

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        loader = self.loaders.train
        loader.set_epoch(epoch)
        size = self.train_size(epoch)
        before = distributed.trainable(self.model)
        for line in finetune.set_epoch(self.model, self.cfg, epoch, self.fresh_modules):  # --freeze-epochs
            self.log(line)
        if callable(getattr(self.model, "set_epoch", None)):  # schedules inside a model (dy_resnet's temperature)
            self.model.set_epoch(epoch)
        if self.world_size > 1 and distributed.trainable(self.model) != before:
            self.net = self.wrap(self.model)  # DDP synchronises the parameters trainable at its start
        self.net.train()
        zero = torch.zeros((), device=self.device)
        loss_sum, correct, seen = zero.clone(), zero.clone(), 0
        grad_norms = GradNormLog(self.model, self.device) if self.cfg.log_grad_norms else None
        updates = 0  # optimizer steps; --max-steps (or a --time-budget refit) may end the epoch early
        lr = current_lr(self.optimizer)
        last_update = epoch_steps(self.cfg, epoch, self.sched_steps)
        bar = self.progress(epoch, min(len(loader), last_update * self.cfg.accum_steps))
        every = max(1, min(SYNC_EVERY, len(loader) // 4))
        start = time.perf_counter()
        autocast = self.precision.autocast()
        # --time-budget: the loop's own speed, from the end of step 2 (kernels built) to step
        # check_at (tiny epochs: the epoch's end decides instead)
        # and a cached speed's check against the loop's own (at the size the probe measured)
        recheck = self.choice is not None and self.choice.chosen_by == "cache" and size == self.spec.img_size
        check_at = min(FIRST_STEPS, len(loader) - 1) if (self.budget or recheck) and epoch == 1 else 0
        since = shown = start
        for step, (x, y, share, first, last) in enumerate(micro_batches(loader, self.cfg.accum_steps), 1):
            x, target = self.mix(x, y)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with sync_context(self.net, last):  # --accum-steps: all-reduce once per update
                loss, hits = train_step(self.net, x, target, loss_fn=self.loss_fn, optimizer=self.optimizer,
                                        autocast=autocast, scaler=self.scaler,
                                        before_update=grad_norms.add if grad_norms else None,
                                        clip_grad=self.cfg.clip_grad, loss_scale=share, zero_grad=first,
                                        update=last)
            if last:
                lr = current_lr(self.optimizer)  # the epoch line's: its last update's, not the next one's
                self.scheduler.step()
                if self.ema is not None:  # once per optimizer update
                    self.ema.update(self.model)
                updates += 1
            loss_sum += loss * y.shape[0]
            correct += hits
            seen += y.shape[0]
            if step == 2 and check_at:
                sync(self.device)
                since, seen_before = time.perf_counter(), seen
            elif step == check_at and step > 2:
                self.first_steps_check(step, since, seen - seen_before)
                last_update = epoch_steps(self.cfg, epoch, self.sched_steps)  # it may shorten this epoch
            end = last and updates >= last_update
            # one process only: under DDP the read is an all-reduce, which every rank must join
            due = bar is not None and self.world_size == 1 and time.perf_counter() - shown >= REFRESH_S
            if step % every == 0 or step == len(loader) or end or due:
                self.check_progress(bar, loss_sum, correct, seen, start, epoch, step)
                shown = time.perf_counter()
            if end:  # the epoch's last update: all of them, or where --max-steps cuts the run
                break
        if bar is not None:
            bar.close()
        loss, hits, seen = self.global_sums(loss_sum, correct, seen)
        out = {"train_loss": loss / max(seen, 1), "train_acc": hits / max(seen, 1),
               "images_per_s": round(seen / max(time.perf_counter() - start, 1e-9), 1), "lr": lr,
               **({"img_size": size} if self.cfg.min_img_size else {}),
               **({"steps": updates} if updates < self.sched_steps else {})}
        if grad_norms is not None:
            out["grad_norms"] = grad_norms.means()
        return out

    def train_size(self, epoch: int) -> int:
        """This epoch's training input size (--min-img-size), set on the in-memory loader."""
        size = epoch_img_size(epoch, self.cfg.epochs, self.spec.img_size, self.cfg.min_img_size,
                              self.cfg.progressive_until)
        if self.cfg.min_img_size:
            self.loaders.train.train_size = size
        return size

    @property
    def saved_model(self) -> nn.Module:
        """What is evaluated and saved: the EMA of the weights with --ema, else the weights."""
        return self.ema.module if self.ema is not None else self.model

    def check_progress(self, bar: Any, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int,
                       start: float, epoch: int, step: int) -> None:
        """One host read: stop on a non-finite loss, refresh the progress bar. Under DDP the sums
        are global, so every rank stops at the same batch."""
        loss, hits, seen = self.global_sums(loss_sum, correct, seen)
        if not np.isfinite(loss):
            raise TrainingDiverged(self.diverged_message(epoch, step, loss))
        if bar is not None:
            speed = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"loss {loss / seen:.4f} acc {100 * hits / seen:.2f}% {speed:.0f} img/s",
                                refresh=False)
            bar.update(step - bar.n)

    def global_sums(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
                    ) -> tuple[float, float, int]:
        """(loss sum, correct, samples) over all ranks, in one host read."""
        count = torch.full_like(loss_sum, seen, dtype=torch.float)
        sums = torch.stack([loss_sum.float(), correct.float(), count])
        loss, hits, n = distributed.all_reduce_sum(sums.double() if self.world_size > 1 else sums).tolist()
        return loss, hits, int(n)

    def check_finite(self, epoch: int) -> None:
        """A finite loss can still leave NaN or infinity in a weight or a BatchNorm running_var;
        such weights are never saved over the last good checkpoint. Rank 0's verdict (it saves)
        is every rank's, so all stop together."""
        bad = ckpt.non_finite(self.model.state_dict()) if self.is_main else None
        bad = distributed.broadcast_object(bad)
        if bad:
            what = f"{len(bad)} weight or buffer tensor(s) hold NaN or infinity ({bad[0]}, ...)"
            raise TrainingDiverged(self.diverged_message(epoch, None, what))

    def diverged_message(self, epoch: int, step: int | None, loss: float | str) -> str:
        last = self.run_dir / ckpt.LAST
        saved = ckpt.recorded_epoch(last) if last.is_file() else None  # the file, not the history:
        # an epoch whose weights went non-finite is in the history and was never saved
        kept = (f"the last good checkpoint is {last} (epoch {saved})" if saved is not None
                else "no checkpoint was written yet")
        fp32 = "" if self.precision.name == "fp32" else f" or use --precision fp32 (now {self.precision.name})"
        what = (f"the training loss became {loss} at epoch {epoch}, batch {step}" if step is not None
                else f"after epoch {epoch}, {loss}")
        return f"{what}; {kept}; lower --lr (now {self.cfg.lr:g}){fp32}"

    def timed_evaluate(self, loader: Iterable[Any]) -> EvalOutput:
        start = time.perf_counter()
        out = self.evaluate(loader)
        out.summary()  # waits for the device: the time is the evaluation's
        self.eval_seconds.append(time.perf_counter() - start)
        return out

    def evaluate(self, loader: Iterable[Any], tta: bool | None = None,
                 on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> EvalOutput:
        """Every sample of ``loader`` (the val split during training, the test split once at the
        end), as one process would see them; ``on_batch`` sees this process's batches."""
        distributed.broadcast_module(self.saved_model, buffers_only=True)  # evaluate what rank 0 saves
        net = self.ema.module if self.ema is not None else self.eval_net  # --ema: the average
        out = evaluate_batches(net, loader, autocast=self.precision.autocast(),
                               channels_last=self.channels_last, label_smoothing=self.cfg.label_smoothing,
                               tta=self.tta if (self.cfg.tta if tta is None else tta) else None,
                               on_batch=on_batch)
        return distributed.gather_eval(out, self.device)  # the whole split, as one process sees it

    def progress(self, epoch: int, total: int) -> Any:
        """A tqdm bar on a terminal; nothing in logs and CI (the epoch line says it all)."""
        if not (self.verbose and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"epoch {epoch}/{self.cfg.epochs}", unit="batch", leave=False,
                    dynamic_ncols=True)

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    # ------------------------------------------------------------------ saving and reporting
    def save(self, epoch: int, record: dict[str, Any], improved: bool, wall: float) -> None:
        self.check_finite(epoch)
        if not self.is_main:
            return
        common = dict(arch=self.cfg.model, model_args=self.model_args, spec=self.spec,
                      config=self.saved_config())
        if improved:
            ckpt.save_checkpoint(self.run_dir / ckpt.BEST, self.saved_model, metrics=record, **common)
        ckpt.save_checkpoint(self.run_dir / ckpt.LAST, self.saved_model, metrics=record, **common)
        append_jsonl(self.run_dir / "metrics.jsonl", record)
        ckpt.save_state(self.run_dir / ckpt.STATE, self.state(epoch, wall))

    def final_report(self, wall: float) -> dict[str, Any]:
        """The one pass over the test split, on best.safetensors as written on disk: report.json and
        confusion.png. Under DDP rank 0 reads it and sends the weights to the others, which help
        evaluate and write nothing."""
        if self.is_main:
            _, tensors = ckpt.read_metadata(self.run_dir / ckpt.BEST)
            self.saved_model.load_state_dict(tensors)
        distributed.broadcast_module(self.saved_model)
        # one process: the pass also keeps each sample's logits for report.html (no second pass)
        collector = interpret.Collector(report_html.TOP_LOSSES) if self.world_size == 1 else None
        out = self.evaluate(self.loaders.test, on_batch=collector.add if collector else None)
        self.test_interpretation = collector.result() if collector else None
        if not self.is_main:
            return {}
        rep = reports.classification_report(out.top5, out.targets, self.spec.classes)
        rep = {"dataset": self.cfg.dataset, "split": "val" if self.loaders.test_is_val else "test",
               "model": self.cfg.model, "checkpoint": ckpt.BEST, "best_epoch": self.best.metrics.get("epoch"),
               **selection(self.best.metrics, self.loaders), **rep, "loss": out.summary()["loss"],
               "tta_views": self.tta.count if self.cfg.tta else 1,
               "transfer": self.transfer_notes, "runtime": self.runtime(), "best_metrics": self.best.metrics, "data": self.loaders.info,
               "evidence": reports.evidence(device=self.device, seed=self.cfg.seed, wall_time_s=wall,
                                            precision=self.precision.name)}
        reports.plot_confusion(np.asarray(rep["confusion_matrix"]), self.spec.classes,
                               self.run_dir / "confusion.png",
                               title=f"{self.cfg.model} on {self.cfg.dataset} ({rep['split']}, "
                                     f"epoch {rep['best_epoch']})")
        write_json_atomic(self.run_dir / "report.json", rep)
        return rep


def budget_speed(choice: probe.Choice, model: nn.Module, shape: tuple[int, int, int], batch_size: int,
                 device: torch.device, compile: bool) -> float:
    """Training images/s at the full input size for --time-budget's first fit: the probe's, where
    it has just timed the chosen setting; else that setting timed now (BUDGET_PROBE_S at most)."""
    if choice.images_per_s and (choice.chosen_by == "probe" or compile):  # compiling again: seconds
        return choice.images_per_s
    setting = probe.Setting(choice.precision, choice.channels_last, compile, choice.threads or 0)
    rows = probe.probe(model, shape, batch_size, [setting], device, timing_step, time_cap_s=BUDGET_PROBE_S)
    return rows[0]["images_per_s"] or 1.0


def budget_costs(cfg: RunConfig, loaders: Any, tta: TTA, speeds: SizeSpeeds, tail_s: float) -> Costs:
    """--time-budget's costs of a run of ``cfg`` on ``loaders``: training epochs at the speeds
    measured per input size, an evaluation of the val split after each (none without one) and
    of the test split at the end, with the run's TTA views."""
    views = tta.count if cfg.tta else 1
    val = loaders.val.num_samples * views if loaders.val is not None else 0
    full = loaders.spec.img_size

    def weights(epochs: int) -> list[float]:
        return speeds.weights(plan_sizes(epochs, full, cfg.min_img_size, cfg.progressive_until))
    return Costs.from_speed(loaders.train.num_samples, val, speeds.full_speed(), tail_s, weights,
                            report_images=loaders.test.num_samples * views)


class GradNormLog:
    """Mean L2 norm of each residual stage's gradient over an epoch, accumulated on the device."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        model = ckpt.unwrap_model(model)
        stages = list(getattr(model, "stages", None) or model.named_children())
        self.names = [name for name, _ in stages]
        self.params = [[p for p in m.parameters() if p.requires_grad] for _, m in stages]
        self.sums = torch.zeros(len(stages), device=device)
        self.steps = 0

    def add(self) -> None:
        norms = [torch.nn.utils.get_total_norm([p.grad for p in ps if p.grad is not None])
                 if any(p.grad is not None for p in ps) else torch.zeros((), device=self.sums.device)
                 for ps in self.params]
        self.sums += torch.stack(norms).to(self.sums)
        self.steps += 1

    def means(self) -> dict[str, float]:
        values = (self.sums / max(self.steps, 1)).tolist()
        return dict(zip(self.names, values))


def default_run_dir(cfg: RunConfig) -> Path:
    """runs/<dataset>-<model>-<timestamp>, with a -2, -3... suffix if that exists already."""
    base = Path("runs") / f"{cfg.dataset}-{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def split_line(loaders: Any) -> str:
    """Which split chooses and which reports, printed when a run starts."""
    info = loaders.info
    size = f"\ninput size {info['img_size_note']}" if info.get("img_size_note") else ""
    tested = (f"{info['test_subset']} of {info['test_of']} images (--test-subset)" if info.get("test_subset")
              else f"{info['test_size']} images")
    if loaders.val is None:
        return (f"no validation split (--val-size 0): {info['train_size']} images train, nothing is "
                f"selected, the last epoch is the result; test: {tested}, read once at the end{size}")
    test = ("the val split too (no test split: selection and report share one split)"
            if loaders.test_is_val else f"{tested}, read once at the end")
    return (f"train {info['train_size']} images | val {info['val_size']} images ({info['val_source']}) "
            f"chooses the checkpoint | test: {test}{size}")


def selection(best: Mapping[str, Any], loaders: Any) -> dict[str, Any]:
    """The report's account of how the checkpoint was chosen."""
    if loaders.val is None:
        return {"selected_on": "none", "val": None,
                "selection_note": "no validation split (--val-size 0): the last epoch is the result"}
    out: dict[str, Any] = {"selected_on": "val", "val": {"top1": best.get("val_acc"), "loss": best.get("val_loss")}}
    if loaders.test_is_val:
        out["selection_note"] = ("no test split: the checkpoint was chosen on the split it is reported "
                                 "on, so the accuracy is biased upwards; add a test/ folder")
    return out


def final_line(rep: Mapping[str, Any], wall: float, path: Path) -> str:
    acc = f"{rep['split']} accuracy {100 * rep['top1']:.2f}%"
    if rep["selected_on"] == "none":
        how = f"after the last epoch ({rep['best_epoch']}; nothing selected)"
    else:
        how = f"of the checkpoint chosen on val (epoch {rep['best_epoch']}, val {100 * rep['val']['top1']:.2f}%)"
    note = f"; {rep['selection_note']}" if rep.get("selection_note") and rep["selected_on"] == "val" else ""
    data = rep.get("data") or {}
    if data.get("test_subset"):
        acc += f" on {data['test_subset']:,} of {data['test_of']:,} test images (--test-subset)"
    total = (rep.get("evidence") or {}).get("process_s")
    took = f"{wall:.1f}s training, {total:.1f}s in all" if total else f"{wall:.1f}s"
    return f"{acc} {how}{note}; {took}; report in {path}"


def format_epoch(r: Mapping[str, Any], epochs: int, improved: bool, ema: bool = False) -> str:
    name = "ema val" if ema else "val"  # with --ema the average is evaluated, not the weights
    size = f"  {r['img_size']}px" if "img_size" in r else ""
    size += f"  {r['steps']:,} step{'s' * (r['steps'] != 1)}" if "steps" in r else ""  # a last epoch --max-steps ended early
    test = (f"{name} loss  -      acc   -    " if r["val_acc"] is None
            else f"{name} loss {r['val_loss']:.4f} acc {100 * r['val_acc']:6.2f}%")
    width = len(str(epochs))
    return (f"epoch {r['epoch']:>{width}}/{epochs}  train loss {r['train_loss']:.4f} acc "
            f"{100 * r['train_acc']:6.2f}%  {test}  lr {r['lr']:.3g}  {r['seconds']:.1f}s"
            f"{size}{'  *' if improved else ''}")
