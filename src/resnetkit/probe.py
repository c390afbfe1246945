"""Speed settings chosen by measurement: the one timing loop, and the probe that runs it before training.

On a CPU the fastest precision and memory format depend on the chip, not on the recipe: bf16
autocast ran 1.1-3x fp32 on an Intel Xeon with AMX and 6-8x *slower* on an AMD EPYC with AVX2
only (BENCHMARKS.md). So ``--precision auto`` and channels_last auto time a few training steps
of the real network, batch and input size under each candidate setting and keep the fastest.
A CPU without native bf16 (no AVX512-BF16 or AMX) never tries bf16. The result is cached per
CPU model and flags, torch version, thread count, network, input size and batch, so a second
run pays nothing. CUDA and MPS keep fixed rules.

The training step itself is passed in (``make_step``): it lives with the trainer, one layer up,
and ``resnetkit bench`` times the same step with :func:`time_steps`.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ._io import write_json_atomic
from .errors import UserError
from .runtime import timed

Step = Callable[[torch.Tensor, torch.Tensor], None]
# make_step(model, mode, precision name) -> one train ("train") or inference ("infer") step on (x, y)
StepFactory = Callable[[nn.Module, str, str], Step]

# 2: the probe takes as many rounds as its time allows (up to MAX_ROUNDS, 7 before), so the
# choices of the shorter probe are measured again once
CACHE_VERSION = 2
WARMUP_STEPS = 2  # oneDNN builds its kernels on the first call of each shape: never timed
# Timed rounds, one step of every candidate per round, until the time cap below. Seven rounds
# (under 1 s) were too few on a shared 2-core Xeon: one probe of the MNIST fast net ranked bf16 +
# channels_last first (3,904 against 3,063 img/s for fp32 + channels_last), and the cached
# choice then trained 6 epochs in 93 s where fp32 + channels_last took 62 s (BENCHMARKS.md).
MIN_ROUNDS, MAX_ROUNDS = 2, 40
# The probe stops after MIN_ROUNDS once it has run this long. A default fast run takes 72-316 s
# on the Xeon of BENCHMARKS.md, so 5% of the shortest is 3.6 s; warm-up and the first rounds fit.
TIME_CAP_S = 2.5
RUN_SHARE = 0.03  # and once it has cost this share of the run it is choosing for (run_steps)
# A run shorter than its probe's least cost (candidates x (warm-up + MIN_ROUNDS) steps) over this
# share is not probed: it takes fp32 and the contiguous layout, which are never far off.
MAX_SHARE = 0.05
DROP_SLOWER = 3.0  # a candidate this many times slower than the best after one round is dropped
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (Cooper Lake, Sapphire Rapids)


# ------------------------------------------------------------------ the machine
def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo on Linux, else what platform knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str] | None:
    """The instruction-set flags of /proc/cpuinfo; None where the file does not exist."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
        return frozenset()
    return None


def bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware. Where /proc/cpuinfo lists flags they decide
    (oneDNN's own check also says yes to plain AVX-512, where bf16 is emulated and slow);
    elsewhere oneDNN's check does."""
    flags = cpu_flags()
    if flags is not None:
        return any(f in flags for f in BF16_FLAGS)
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def precision_note(precision: str, device: torch.device) -> str | None:
    """A warning when bf16 was forced on a CPU that emulates it: it runs several times slower."""
    if precision != "bf16" or device.type != "cpu" or bf16_native():
        return None
    return "note: this CPU has no native bf16 (AVX512-BF16/AMX); --precision auto or fp32 is likely faster here"


def matmul_gflops(dtype: torch.dtype = torch.float32, *, n: int = 1024, seconds: float = 1.0,
                  device: torch.device | str = "cpu") -> float:
    """The machine's matmul peak in GFLOP/s: the fastest of repeated n x n products (2 n^3 FLOPs
    each) within about ``seconds`` after one untimed product. It is the yardstick of
    utilisation: training FLOP/s over this peak at the training's precision."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn((n, n), generator=generator).to(device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    best, start, reps = float("inf"), time.perf_counter(), 0
    while reps < 2 or time.perf_counter() - start < seconds:
        best = min(best, time_steps(lambda x, y: torch.mm(x, y), a, b, 1, device))
        reps += 1
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------ timing
def time_steps(step: Step, x: torch.Tensor, y: torch.Tensor, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step(x, y)`` by the one timing loop (runtime.timed: the
    device synchronised before each read of the clock). Steps never read a value back to the
    host, as in the trainer."""
    return timed(lambda: step(x, y), steps=steps, device=device)[1]


@dataclass(frozen=True)
class Setting:
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    compile: bool = False

    def name(self) -> str:
        return " + ".join([self.precision] + ["channels_last"] * self.channels_last
                          + ["compile"] * self.compile)


def num_classes(model: nn.Module) -> int:
    fc = getattr(model, "fc", None)
    return int(fc.out_features) if isinstance(fc, nn.Linear) and fc.out_features else 10


def prepare(model: nn.Module, input_size: Sequence[int], batch_size: int, setting: Setting, mode: str,
            device: torch.device, make_step: StepFactory) -> tuple[Step, torch.Tensor, torch.Tensor]:
    """A step of a fresh copy of ``model`` under ``setting`` and its fixed random batch; the
    model itself is left untouched and the global random generators are not advanced."""
    net = copy.deepcopy(model).to(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *input_size), generator=generator).to(device)
    y = torch.randint(0, num_classes(net), (batch_size,), generator=generator).to(device)
    if setting.channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if setting.compile:
        torch._dynamo.reset()  # each compiled setting starts from an empty cache
        net = torch.compile(net)
    return make_step(net, mode, setting.precision), x, y


# ------------------------------------------------------------------ the probe
@dataclass
class Choice:
    """What a run uses, and why: ``chosen_by`` is probe, cache, flag or rule (CUDA and MPS)."""

    precision: str
    channels_last: bool
    compile: bool
    chosen_by: str
    images_per_s: float | None = None  # the chosen setting's probe speed (training images/s)
    reason: str = ""  # e.g. "bf16 not native here"
    measured: list[dict[str, Any]] = field(default_factory=list)  # every candidate's speed
    probe_seconds: float | None = None

    def describe(self, forced: str = "forced by flags") -> str:
        """``fp32 + channels_last (probe: 671 img/s; bf16 not native here)``; ``forced``: where a
        fixed setting came from (a resumed run reads it from its config)."""
        head = Setting(self.precision, self.channels_last, self.compile).name()
        why = {"probe": "probe", "cache": "cached probe"}.get(self.chosen_by)
        if why and self.images_per_s:
            parts = [f"{why}: {self.images_per_s:,.0f} img/s"]
        elif self.chosen_by == "flag":
            parts = [forced]
        else:
            parts = [] if self.reason else ["this device's rule"]
        parts += [self.reason] if self.reason else []
        return f"{head} ({'; '.join(parts)})"


def candidates(device: torch.device, precision: str, channels_last: bool | None, compile: bool,
               bf16_ok: bool) -> list[Setting]:
    """The settings to time on a CPU: a forced flag fixes its axis, auto tries both values."""
    precisions = [precision] if precision != "auto" else ["fp32", *(["bf16"] if bf16_ok else [])]
    layouts = [channels_last] if channels_last is not None else [False, True]
    return [Setting(p, cl, compile) for p in precisions for cl in layouts]


def probe(model: nn.Module, input_size: Sequence[int], batch_size: int, settings: Sequence[Setting],
          device: torch.device, make_step: StepFactory, *, time_cap_s: float = TIME_CAP_S,
          run_steps: int | None = None) -> list[dict[str, Any]]:
    """Training images/s of each setting: WARMUP_STEPS untimed steps each, then rounds of one timed
    step per setting, interleaved so that a busy spell of a shared machine hits every setting
    alike; a setting's speed is its median step. A setting that fails to run, or is DROP_SLOWER
    times slower than the best after one round, stops being timed. ``run_steps``: the training
    steps of the run to come; the probe then also stops at RUN_SHARE of their estimated time."""
    rows = {s: {**asdict(s), "images_per_s": None, "error": None} for s in settings}
    steps: dict[Setting, tuple[Step, torch.Tensor, torch.Tensor]] = {}
    times: dict[Setting, list[float]] = {s: [] for s in settings}
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the run's random stream is not advanced by the probe
        for s in settings:
            try:
                steps[s] = prepare(model, input_size, batch_size, s, "train", device, make_step)
                time_steps(*steps[s], WARMUP_STEPS, device)
            except Exception as e:  # noqa: BLE001 - a setting this machine cannot run is a result
                rows[s]["error"] = failure(e)
                steps.pop(s, None)
        for rnd in range(MAX_ROUNDS):
            if rnd >= MIN_ROUNDS and time.perf_counter() - start > time_cap_s:
                break
            for s in list(steps):
                times[s].append(time_steps(*steps[s], 1, device))
            if rnd == 0 and steps:
                best = min(times[s][0] for s in steps)
                for s in [s for s in steps if times[s][0] > DROP_SLOWER * best]:
                    steps.pop(s)
                if run_steps:
                    time_cap_s = min(time_cap_s, RUN_SHARE * run_steps * best)
    for s, t in times.items():
        if t:
            rows[s]["images_per_s"] = round(batch_size / statistics.median(t), 1)
    return list(rows.values())


def failure(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:160]
    return f"failed: {type(e).__name__}: {first}".rstrip(": ")


def choose(model: nn.Module, input_size: Sequence[int], batch_size: int, device: torch.device, *,
           precision: str, channels_last: bool | None, compile: bool, network: str,
           make_step: StepFactory, run_steps: int | None = None) -> Choice:
    """Resolve ``--precision`` and channels_last for a run. Forced values are kept; on a CPU the
    rest is measured (or read from the cache); on CUDA auto is bf16 where supported, else fp16
    with a GradScaler, and MPS runs fp32; channels_last auto is off on both."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"unknown --precision {precision!r}; choose auto, fp32, bf16 or fp16")
    if device.type != "cpu":
        chosen = precision if precision != "auto" else gpu_precision(device)
        by = "flag" if precision != "auto" and channels_last is not None else "rule"
        return Choice(chosen, bool(channels_last), compile, by)
    bf16_ok = bf16_native()
    reason = "" if bf16_ok or precision != "auto" else "bf16 not native here"
    settings = candidates(device, precision, channels_last, compile, bf16_ok)
    if len(settings) == 1:
        s = settings[0]
        return Choice(s.precision, s.channels_last, compile, "flag", reason=reason)
    key = cache_key(network, input_size, batch_size, settings)
    cached = read_cache().get(key)
    if cached:
        return Choice(**{**cached, "chosen_by": "cache", "reason": reason})
    least = len(settings) * (WARMUP_STEPS + MIN_ROUNDS)
    if run_steps is not None and run_steps * MAX_SHARE < least:
        s = next((s for s in settings if s.precision == "fp32" and not s.channels_last), settings[0])
        short = f"a run of {run_steps} steps is too short to probe"
        return Choice(s.precision, s.channels_last, compile, "rule",
                      reason="; ".join(r for r in (short, reason) if r))
    start = time.perf_counter()
    rows = probe(model, input_size, batch_size, settings, device, make_step, run_steps=run_steps)
    ok = [r for r in rows if r["images_per_s"]]
    if not ok:
        raise UserError(f"no setting could train here ({rows[0]['error']}); force one with --precision "
                        f"fp32 --no-channels-last")
    best = max(ok, key=lambda r: r["images_per_s"])
    choice = Choice(best["precision"], best["channels_last"], compile, "probe", best["images_per_s"],
                    reason, rows, round(time.perf_counter() - start, 2))
    write_cache(key, choice)
    return choice


def gpu_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


# ------------------------------------------------------------------ the cache
def cache_file() -> Path:
    """$RESNETKIT_CACHE (the folder the decode cache uses too), else the user cache folder."""
    env = os.environ.get("RESNETKIT_CACHE")
    if env:
        return Path(env).expanduser() / "probe.json"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "resnetkit" / "cache" / "probe.json"


def cache_key(network: str, input_size: Sequence[int], batch_size: int, settings: Sequence[Setting]) -> str:
    """Everything that changes which setting is fastest: the chip, the software, the work."""
    parts = {"cpu": cpu_model(), "flags": sorted(cpu_flags() or ()), "torch": torch.__version__,
             "threads": torch.get_num_threads(), "network": network, "input": list(input_size),
             "batch": batch_size, "candidates": [s.name() for s in settings], "v": CACHE_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def read_cache() -> dict[str, Any]:
    """The cached choices; an unreadable or foreign file counts as empty (it is only a cache)."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache_file().read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def write_cache(key: str, choice: Choice) -> None:
    entry = {k: v for k, v in asdict(choice).items() if k not in ("chosen_by", "reason")}
    with contextlib.suppress(OSError):  # a read-only home only costs the next run a probe
        path = cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**read_cache(), key: entry})
