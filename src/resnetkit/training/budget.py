"""``--time-budget``: how many epochs fit in a wall-clock budget for the whole process.

The budget counts everything from the process start: imports, data loading, the speed probe,
training, every evaluation (with TTA), the final report and its figures. The trainer fits the
epochs three times, each with a better measurement: before training from the probe's images/s,
after the first steps of epoch 1 from the loop's own images/s, and after each epoch from its
measured seconds. A plan is a number of optimizer steps: whole epochs and, where the budget
holds a share of one more, that share of its steps (``--max-steps``), so the run ends near the
budget rather than up to one epoch short of it. The schedule (one-cycle, cosine, step) is
rebuilt for the new length at the current step, so the run still ends annealed instead of being
cut off. With progressive resizing each epoch costs what an image of its size was measured to
cost (``SizeSpeeds``: the probe at full size, the run's own steps at the sizes it has trained,
interpolated in between), so the small early epochs neither shrink nor inflate the plan.
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import probe
from ..config import RunConfig
from ..data.augment import TTA
from ..data.progressive import SIZE_STEP, epoch_img_sizes
from ..errors import UserError
from ..steps import timing_step
from . import distributed

TARGET = 0.97  # plan to end at 97% of the budget: estimates from a shared machine are noisy
EVAL_SPEEDUP = 3.0  # an inference image costs a third of a training image (1 forward of 3)
# The end of a run past its last evaluation (the curves, the final report's figures and files,
# the interpreter's exit) scales with how fast this machine runs Python, as the start-up does:
# 1.5 s after 2.5 s of start-up on a quiet 2-core machine, 24.5 s after 35 s under heavy load.
TAIL_PER_STARTUP = 0.75
TAIL_MIN_S = 1.0
GROW_UNTIL = 0.25  # more epochs only while this share of the planned run is done (the lr still rises)
GROW_BY = 0.05  # and only by this share of the plan or more: not on noise; later by at most this
# share per refit (the lr, past its peak, steps back up a little, as a shrink steps it down)
MIN_PART = 0.1  # a last, partial epoch trains at least this share of an epoch's steps
RECENT = 3  # epochs whose mean seconds predict the next ones
# The most epochs a plan may hold: far past any real run (four days of the 8x8 digits are ~1.4
# million epochs), it only bounds the search
MAX_EPOCHS = 10_000_000
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_START = time.monotonic()  # fallback process start where /proc is unavailable
# The refit after the first steps of epoch 1 keeps no less than this share of the plan: a short
# window that a passing load slowed (e.g. another process's threads on the same cores: 18x
# measured) must not end the run after epoch 1;
# the end of epoch 1, a whole epoch's measure, may shrink it further
FIRST_STEPS_LEAST = 0.5
# A cached probe's speed is from another hour, and a shared machine drifts (the same 28 px epoch
# took 19 s in one run and 24 s in the next); --time-budget times the chosen setting afresh, for
# at most this long, unless the probe has just timed it
BUDGET_PROBE_S = 1.5
QUIET_REFIT = 0.05  # a refit within this share of the plan is made but not printed
MIN_REFIT = 0.002  # nor made at all within this share (a few steps: noise, and a replay of the schedule)


def parse_duration(value: str | float | int) -> float:
    """Seconds in a duration: ``90``, ``90s``, ``3m``, ``1.5h``, ``2m30s``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([hms]?)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise UserError(f"--time-budget takes a duration such as 90, 90s, 3m or 1h30m, got {value!r}")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"--time-budget must be a positive duration, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``3m``, ``90s``, ``1m30s``: as a user would type it."""
    minutes, secs = divmod(round(seconds), 60)
    if minutes and secs:
        return f"{minutes}m{secs}s"
    return f"{minutes}m" if minutes else f"{secs}s"


def process_age() -> float:
    """Seconds since this process started (Linux: its start time in /proc; else since this
    module was imported, which misses the interpreter's own start-up)."""
    try:
        fields = open("/proc/self/stat", encoding="ascii").read().rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, clock ticks since boot
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _START


@dataclass
class Costs:
    """Seconds per unit of work, as last measured."""

    train_epoch_s: float  # one epoch of training steps at the full input size
    eval_s: float  # one evaluation during training (the val split, TTA included); 0: none
    tail_s: float = TAIL_MIN_S  # the end past the final report's evaluation
    # weights(E): each epoch's cost in a run of E epochs, as a share of a full-size epoch
    # (progressive resizing); None: every epoch costs train_epoch_s
    weights: Callable[[int], Sequence[float]] | None = None
    report_s: float | None = None  # the final report's evaluation (the test split); None: eval_s

    def train_s(self, epochs: float, done: float) -> float:
        """Seconds of training left in a run of ``epochs`` epochs (the last possibly partial) of
        which ``done`` are trained."""
        n = math.ceil(epochs)
        whole = math.floor(done)
        if self.weights is None:  # every epoch costs the same: closed form
            return max(0.0, epochs - done) * self.train_epoch_s if n else 0.0
        w = np.asarray(self.weights(n), dtype=float)
        left = float(w[whole:n].sum()) - (n - epochs) * (float(w[-1]) if n else 0.0)  # the last epoch's untrained share
        left -= (done - whole) * (float(w[whole]) if whole < n else 0.0)
        return max(0.0, left) * self.train_epoch_s

    @classmethod
    def from_speed(cls, train_images: int, eval_images: int, images_per_s: float,
                   tail_s: float = TAIL_MIN_S,
                   weights: Callable[[int], Sequence[float]] | None = None,
                   report_images: int | None = None) -> "Costs":
        """From a training throughput at the full input size: evaluation images (always at full
        size) at EVAL_SPEEDUP times that rate. ``eval_images``: one evaluation during training (0
        without a val split); ``report_images``: the final one (None: as many)."""
        rate = EVAL_SPEEDUP * images_per_s
        return cls(train_images / images_per_s, eval_images / rate, tail_s, weights,
                   None if report_images is None else report_images / rate)


def plan_sizes(epochs: int, full: int, min_size: int | None, until: float) -> np.ndarray:
    """:func:`resnetkit.data.progressive.epoch_img_sizes` as one array (the same rule, the same
    rounding: both round half to even), for plans of many epochs."""
    if not min_size or min_size >= full:
        return np.full(epochs, full, dtype=np.int64)
    last = max(1, round(until * epochs))  # the first epoch at full size
    e = np.arange(1, epochs + 1)
    ramp = min_size + (full - min_size) * (e - 1) / max(1, last - 1)
    sizes = np.clip(SIZE_STEP * np.round(ramp / SIZE_STEP), min_size, full).astype(np.int64)
    return np.where(e >= last, full, sizes)


@dataclass
class SizeSpeeds:
    """Seconds per training image at each input size measured so far (the probe's at ``full``,
    the run's own at the sizes it trained, the last RECENT measurements of each averaged, the
    latest alone where it is slower).
    Other sizes are interpolated linearly in the pixel count between the measured ones; with
    one size measured, the cost scales with the pixel count. An epoch at 12 px of a 28 px net
    costs more than its 18% of the pixels (measured: ~35%), which the pixel count alone misses."""

    full: int
    measured: dict[int, list[float]] = field(default_factory=dict)

    def record(self, size: int, images_per_s: float, replace: bool = False) -> None:
        """A measured speed at ``size``; ``replace``: it supersedes those before (the loop's own
        first steps over the probe's, a whole epoch over the first steps)."""
        seconds = self.measured.setdefault(size, [])
        if replace:
            seconds.clear()
        seconds.append(1.0 / max(images_per_s, 1e-9))
        del seconds[:-RECENT]

    def per_image(self, size: int) -> float:
        # the recent mean, or the latest where it is slower: a load that began mid-run (another
        # training beside this one) costs from the epoch it is first seen, not a third of it
        points = sorted((s * s, max(sum(t) / len(t), t[-1])) for s, t in self.measured.items())
        if len(points) == 1:
            area, seconds = points[0]
            return seconds * size * size / area
        return float(np.interp(size * size, [a for a, _ in points], [t for _, t in points]))

    def full_speed(self) -> float:
        """Training images/s at the full input size."""
        return 1.0 / self.per_image(self.full)

    def weights(self, sizes: Sequence[int]) -> np.ndarray:
        """Each size's cost per image as a share of the full size's (a plan of many epochs
        repeats few sizes: each is interpolated once, then looked up)."""
        sizes = np.asarray(sizes, dtype=np.int64)
        if not sizes.size:
            return np.zeros(0)
        full, low = self.per_image(self.full), int(sizes.min())
        table = np.array([self.per_image(s) / full for s in range(low, int(sizes.max()) + 1)])
        return table[sizes - low]


def evaluations(first: int, last: int, eval_every: int) -> int:
    """Evaluations in epochs first..last when the run ends at ``last`` (it always evaluates there)."""
    if last < first:
        return 0
    every = (last // eval_every) - ((first - 1) // eval_every)  # multiples of eval_every in [first, last]
    return every + (last % eval_every != 0)


def remaining_seconds(epochs: float, done: float, costs: Costs, eval_every: int) -> float:
    """Seconds from now to the end of the process for a run of ``epochs`` epochs (the last may
    be partial) of which ``done`` (possibly fractional: the first steps) are trained."""
    return (costs.train_s(epochs, done)
            + evaluations(math.floor(done) + 1, math.ceil(epochs), eval_every) * costs.eval_s
            + (costs.eval_s if costs.report_s is None else costs.report_s)  # the final report's
            + costs.tail_s)


def fit_epochs(left_s: float, done: float, costs: Costs, eval_every: int, *, minimum: int = 1,
               limit: int = MAX_EPOCHS, steps_per_epoch: int | None = None) -> float:
    """The longest run whose remaining work fits in ``left_s`` seconds, in epochs: the most whole
    epochs, at least ``minimum``. Given ``steps_per_epoch``, the plan may end inside an epoch, at a
    step (``k / steps_per_epoch``; its evaluation counted): the most steps of one more epoch that
    still fit, or, where even ``minimum`` whole epochs do not, the last of them cut to what fits.
    A partial epoch trains at least MIN_PART of its steps and more than are already done.
    The search doubles, then halves (the remaining time grows with the epochs): O(log epochs)
    evaluations of the cost model, so a budget of days plans as fast as one of seconds."""
    epochs = max(minimum, math.floor(done) + 1)

    def fits(e: float) -> bool:
        return remaining_seconds(e, done, costs, eval_every) <= left_s

    if epochs < limit and fits(epochs + 1):
        lo, hi = epochs + 1, epochs + 2  # lo fits; find an hi that does not, then bisect
        while hi < limit and fits(hi):
            lo, hi = hi, min(limit, epochs + 2 * (hi - epochs))
        if hi >= limit and fits(limit):
            lo = hi = limit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        epochs = lo
    if not steps_per_epoch or epochs >= limit:
        return epochs
    fits_whole = fits(epochs)
    base = epochs if fits_whole else epochs - 1  # whole epochs before the partial one
    # done is steps / steps_per_epoch: (30 / 44) * 44 is 29.999...
    least = max(math.ceil(MIN_PART * steps_per_epoch), math.floor((done - base) * steps_per_epoch + 1e-9) + 1)
    if least >= steps_per_epoch:
        return epochs
    lo, hi = least - 1, steps_per_epoch  # the most steps k in [least, steps) that fit: lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(base + mid / steps_per_epoch):
            lo = mid
        else:
            hi = mid
    if lo >= least:
        return base + lo / steps_per_epoch
    return epochs if fits_whole else base + least / steps_per_epoch


@dataclass
class Budget:
    """A run's budget: ``seconds`` for the whole process, which had run ``startup_s`` when the
    trainer started (imports)."""

    seconds: float
    startup_s: float = 0.0

    @classmethod
    def start(cls, seconds: float) -> "Budget":
        return cls(seconds, process_age())

    @property
    def tail_s(self) -> float:
        return max(TAIL_MIN_S, TAIL_PER_STARTUP * self.startup_s)

    def used(self) -> float:
        """Seconds of the budget spent so far (the process's age)."""
        return process_age()

    def left(self) -> float:
        """Seconds of the plan left now (the plan ends at TARGET of the budget)."""
        return TARGET * self.seconds - process_age()

    def first_fit(self, costs: Costs, eval_every: int, steps_per_epoch: int | None = None,
                  measured: str = "") -> float:
        """Epochs for a run that has trained nothing yet (whole, and a share of one more given
        ``steps_per_epoch``); a budget too short for one is an error, which quotes ``measured``
        (the speed and the load it was measured beside) and the training speed it assumed."""
        left = self.left()
        one = remaining_seconds(1, 0, costs, eval_every)
        if one > left:
            need = format_duration(math.ceil((self.seconds - left + one) / TARGET))
            speed = f" ({measured})" if measured else ""
            raise UserError(f"--time-budget {format_duration(self.seconds)} is too short: one epoch with "
                            f"its evaluation takes about {one:.0f} s here{speed} on top of "
                            f"{self.seconds * TARGET - left:.0f} s spent so far; give at least {need}, or "
                            f"train on fewer images with --subset")
        return fit_epochs(left, 0, costs, eval_every, steps_per_epoch=steps_per_epoch)

    def refit(self, planned: float, done: float, costs: Costs, eval_every: int,
              steps_per_epoch: int | None = None) -> float:
        """Epochs after ``done`` of ``planned`` are trained: fewer if the rest no longer fits;
        more early in the run (while one-cycle's rise barely changes with the length) by GROW_BY
        of the plan or more, later by GROW_BY of it at most (whole epochs without
        ``steps_per_epoch``)."""
        fitted = fit_epochs(self.left(), done, costs, eval_every, minimum=math.floor(done) + 1,
                            steps_per_epoch=steps_per_epoch)
        if fitted <= planned:
            return fitted
        if done <= GROW_UNTIL * planned:
            return fitted if fitted >= planned * (1 + GROW_BY) else planned
        quantum = steps_per_epoch or 1
        return max(planned, min(fitted, math.floor(planned * (1 + GROW_BY) * quantum) / quantum))


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


class RunBudget:
    """--time-budget inside a run: the first fit before training, a refit after the first steps
    and after each epoch. It reads the Trainer ``t`` it is handed and sets its length
    (:meth:`Trainer.set_epochs`)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.speeds = SizeSpeeds(0)  # set by first_fit
        self.train_seconds: list[tuple[int, float]] = []  # (input size, seconds) of each epoch
        self.fitted_speed = 0.0  # the images/s of the first fit (of its second measure, if any)

    @classmethod
    def start(cls, seconds: float) -> "RunBudget":
        return cls(Budget.start(seconds))

    def first_fit(self, t: Any, model: nn.Module) -> None:
        """The first fit of --time-budget, from the probe's images/s: timed now unless the probe
        has just timed the chosen setting (not when it came from the cache or from flags)."""
        speed = None
        if t.is_main:
            spec, choice = t.spec, t.choice
            if choice is None:  # flags decided: the setting in use, untimed
                choice = probe.Choice(t.precision.name, t.channels_last, t.cfg.compile, "flag")
            speed = budget_speed(choice, model, (spec.in_chans, spec.img_size, spec.img_size),
                                 t.loaders.train.batch_size, t.device, t.cfg.compile)
        speed = self.fitted_speed = distributed.broadcast_object(speed)
        self.speeds = SizeSpeeds(t.spec.img_size)
        self.speeds.record(t.spec.img_size, speed)
        try:
            first = self.budget.first_fit(self.costs(t), t.cfg.eval_every, t.sched_steps)
        except UserError:
            c = t.choice
            if t.world_size > 1 or not (c.load or (c.spread or 0) >= probe.STABLE_SPREAD):
                raise
            first = self.measured_again(t, model)  # never refused on a measurement made under load
        epochs = distributed.broadcast_object(self.capped(t, first))
        t.set_epochs(epochs)
        t.notes.append(f"budget {format_duration(self.budget.seconds)} -> {t.plan_text()} "
                       f"at ~{speed:,.0f} img/s")

    def measured_again(self, t: Any, model: nn.Module) -> float:
        """The first fit from the chosen setting timed again now; a budget still too short is
        refused with the speed measured and the load beside it."""
        spec, c = t.spec, t.choice
        before, start = probe.cpu_ticks(), time.perf_counter()
        again = probe.Choice(c.precision, c.channels_last, c.compile, "cache", c.images_per_s, threads=c.threads)
        speed = budget_speed(again, model, (spec.in_chans, spec.img_size, spec.img_size),
                             t.loaders.train.batch_size, t.device, False)
        load = probe.load_text(probe.other_load(before, probe.cpu_ticks(), time.perf_counter() - start))
        self.speeds.record(t.spec.img_size, speed, replace=True)
        self.fitted_speed = speed
        note = f"measured twice, now at ~{speed:,.0f} img/s" + (f"; {load}" if load else "")
        return self.budget.first_fit(self.costs(t), t.cfg.eval_every, t.sched_steps, measured=note)

    def costs(self, t: Any) -> Costs:
        """--time-budget's cost model from the speeds measured so far (``self.speeds``)."""
        return budget_costs(t.cfg, t.loaders, t.tta, self.speeds, self.budget.tail_s)

    def epoch_sizes(self, t: Any, epochs: int) -> list[int]:
        """Each epoch's training input size in a run of ``epochs`` (--min-img-size)."""
        return epoch_img_sizes(epochs, t.spec.img_size, t.cfg.min_img_size, t.cfg.progressive_until)

    def capped(self, t: Any, epochs: float) -> float:
        """A --time-budget plan held to the user's --max-steps, if any."""
        return min(epochs, t.step_cap / t.sched_steps) if t.step_cap else epochs

    def refit(self, t: Any, done: float, costs: Costs, why: str, least: float = 0.0) -> None:
        """Refit the epochs to what is left of the budget (``least`` of them at least); a new
        length rebuilds the schedule at the current step (so it still ends annealed) and
        rewrites config.json (:meth:`Trainer.restart_schedule`)."""
        planned = t.planned_epochs
        epochs = distributed.broadcast_object(
            self.capped(t, max(least, self.budget.refit(planned, done, costs, t.cfg.eval_every,
                                                        t.sched_steps))))
        new, old = round(epochs * t.sched_steps), round(planned * t.sched_steps)
        if abs(new - old) < max(1.0, MIN_REFIT * old):  # each new plan replays the schedule so far
            return
        was = t.plan_text()
        t.set_epochs(epochs)
        if abs(epochs - planned) > QUIET_REFIT * planned:  # not every nudge
            t.log(f"budget {format_duration(self.budget.seconds)}: {why} -> {t.plan_text()} (was {was})")
        t.restart_schedule()

    def after_first_steps(self, t: Any, step: int, speed: float) -> None:
        """After the first steps of epoch 1: refit from the loop's own images/s (``speed``)."""
        self.speeds.record(self.epoch_sizes(t, t.cfg.epochs)[0], speed, replace=True)  # the loop's own
        least = math.ceil(FIRST_STEPS_LEAST * t.planned_epochs * t.sched_steps) / t.sched_steps
        self.refit(t, step / len(t.loaders.train), self.costs(t),
                   f"first steps at ~{speed:,.0f} img/s", least=least)

    def after_epoch(self, t: Any, epoch: int, train_seconds: float) -> None:
        """After each epoch: refit from the mean speed of the last RECENT epochs at each input size
        (the first whole epoch at a size replaces the first steps' estimate) and the last
        evaluation's seconds."""
        size = self.epoch_sizes(t, t.cfg.epochs)[epoch - 1]
        first_at_size = size not in {s for s, _ in self.train_seconds}
        self.train_seconds.append((size, train_seconds))
        if epoch >= t.cfg.epochs:
            return
        speed = t.loaders.train.num_samples / max(train_seconds, 1e-9)
        self.speeds.record(size, speed, replace=first_at_size)
        costs = self.costs(t)
        if t.eval_seconds:
            costs.eval_s = t.eval_seconds[-1]
        self.refit(t, epoch, costs, f"epoch {epoch} at ~{speed:,.0f} img/s")

    def end_line(self) -> str:
        used = self.budget.used()
        return (f"budget {format_duration(self.budget.seconds)}: {used:.1f} s used so far "
                f"({used / self.budget.seconds:.0%}; the interpreter's exit follows)")
