"""Speed settings chosen by measurement: the one timing loop, and the probe that runs it before training.

On a CPU the fastest precision and memory format depend on the chip, not on the recipe: bf16
autocast ran 1.1-3x fp32 on an Intel Xeon with AMX and 6-8x *slower* on an AMD EPYC with AVX2
only (BENCHMARKS.md). So ``--precision auto``, channels_last auto and the thread count (1..N,
unless ``--threads`` is given) time a few training steps of the real network, batch and input
size under each candidate setting and keep the fastest. A CPU without native bf16 (no
AVX512-BF16 or AMX) never tries bf16. The result is cached per CPU model and flags, torch
version, cores, network, input size and batch, so a second run pays nothing. CUDA and MPS keep
fixed rules.

A probe can be lied to: another process on the same cores makes every step slower and the
ranking noisy. Rounds run until the chosen setting's step times agree (STABLE_SPREAD) or a cap;
a probe whose spread stays large, or that ran beside processes using much CPU (/proc), says so
and is not cached. A cached choice is checked against the run's own first steps
(:func:`recheck`), and re-probed when they differ by more than RECHECK_RATIO. The OpenMP wait
policy, fixed before torch loads (:mod:`resnetkit._omp`), is measured here in child processes.

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
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import _omp
from ._io import read_json_dict, write_json_atomic
from .config import RunConfig
from .errors import UserError
from .models import create_model
from .runtime import cpu_threads, timed

CPU = torch.device("cpu")  # the thread count is a CPU setting wherever the probe runs

Step = Callable[[torch.Tensor, torch.Tensor], None]
# make_step(model, mode, precision name) -> one train ("train") or inference ("infer") step on (x, y)
StepFactory = Callable[[nn.Module, str, str], Step]

# 3: threads are a candidate and noisy probes are not cached, so older entries are measured again
CACHE_VERSION = 3
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
# A verdict needs step times that agree: (q3 - q1) / median of the chosen setting's steps under
# this share. On a quiet machine the spread is a few percent; beside another training, 30-200%.
STABLE_SPREAD = 0.15
STABLE_ROUNDS = 5  # rounds after which an agreeing probe may stop before its time cap
# Other processes using more than this share of one core, together, while the probe ran make
# its result a measurement of the load, not of the settings: reported and not cached
BUSY_CPU = 0.5
RECHECK_RATIO = 2.0  # a cached speed this far from the run's own first steps is measured again
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (Cooper Lake, Sapphire Rapids)


# ------------------------------------------------------------------ the machine
def network_key(cfg: RunConfig, model_args: dict[str, Any]) -> str:
    """The network as the probe's cache knows it: a frozen backbone trains less."""
    return json.dumps({"model": cfg.model, "args": dict(model_args), "freeze": cfg.freeze},
                      sort_keys=True, default=str)


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


REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine_summary() -> str:
    """``CPU model (avx2, avx512f, ...)``: the flags that decide which settings are fast, as the
    probe's cache records the machine it measured."""
    flags = cpu_flags() or frozenset()
    shown = [f for f in REPORTED_FLAGS if f in flags]
    return f"{cpu_model()} ({', '.join(shown) or 'no AVX2'})"


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
    threads: int = 0  # intra-op CPU threads; 0: as set when the probe runs

    def name(self) -> str:
        threads = [f"{self.threads} thread{'s' * (self.threads != 1)}"] if self.threads else []
        return " + ".join([self.precision] + ["channels_last"] * self.channels_last
                          + ["compile"] * self.compile + threads)


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
    threads: int | None = None  # intra-op CPU threads (None: not chosen here, e.g. on a GPU)
    threads_by: str = ""  # probe, cache, flag (--threads or the resumed run's config)
    wait_policy: dict[str, Any] = field(default_factory=dict)  # OMP_WAIT_POLICY, who chose it (wait_policy_for_run)
    spread: float | None = None  # the chosen setting's (q3 - q1) / median step time
    load: str = ""  # what else used the CPU while the probe ran, when it was much
    cached: bool = False  # whether the probe's result became the cache entry

    def setting(self) -> Setting:
        return Setting(self.precision, self.channels_last, self.compile, self.threads or 0)

    def describe(self, forced: str = "forced by flags") -> str:
        """``fp32 + channels_last + 1 thread (probe: 671 img/s; bf16 not native here)``;
        ``forced``: where a fixed setting came from (a resumed run reads it from its config)."""
        head = self.setting().name()
        why = {"probe": "probe", "cache": "cached probe"}.get(self.chosen_by)
        if why and self.images_per_s:
            parts = [f"{why}: {self.images_per_s:,.0f} img/s"]
            if self.spread is not None and self.chosen_by == "probe":
                parts[0] += f" +-{self.spread / 2:.0%}"
        elif self.chosen_by == "flag":
            parts = [forced]
        else:
            parts = [] if self.reason else ["this device's rule"]
        if self.threads and self.threads_by == "flag" and self.chosen_by != "flag":
            parts.append("threads forced")
        parts += [self.reason] if self.reason else []
        return f"{head} ({'; '.join(parts)})"


def thread_candidates(forced: int | None) -> list[int]:
    """1..N intra-op threads, N the count torch would use: 1, N and, from 4 cores, N/2."""
    if forced:
        return [forced]
    n = max(1, torch.get_num_threads())
    return sorted({1, n, *([n // 2] if n >= 4 else [])})


def candidates(device: torch.device, precision: str, channels_last: bool | None, compile: bool,
               bf16_ok: bool, threads: Sequence[int] = (0,)) -> list[Setting]:
    """The settings to time on a CPU: a forced flag fixes its axis, auto tries every value."""
    precisions = [precision] if precision != "auto" else ["fp32", *(["bf16"] if bf16_ok else [])]
    layouts = [channels_last] if channels_last is not None else [False, True]
    return [Setting(p, cl, compile, t) for p in precisions for cl in layouts for t in threads]


def spread(times: Sequence[float]) -> float:
    """(q3 - q1) / median of step times; (max - min) / median below four of them."""
    if len(times) < 2:
        return float("inf")
    mid = statistics.median(times)
    if len(times) < 4:
        return (max(times) - min(times)) / mid
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / mid


def probe(model: nn.Module, input_size: Sequence[int], batch_size: int, settings: Sequence[Setting],
          device: torch.device, make_step: StepFactory, *, time_cap_s: float = TIME_CAP_S,
          run_steps: int | None = None) -> list[dict[str, Any]]:
    """Training images/s of each setting: WARMUP_STEPS untimed steps each, then rounds of one timed
    step per setting, interleaved so that a busy spell of a shared machine hits every setting
    alike; a setting's speed is its median step, its ``spread`` how far its steps disagree. A
    setting that fails to run, or is DROP_SLOWER times slower than the best after one round,
    stops being timed. Rounds stop at the time cap, or from STABLE_ROUNDS on once every setting
    still timed agrees within STABLE_SPREAD. ``run_steps``: the training steps of the run to
    come; the probe then also stops at RUN_SHARE of their estimated time."""
    rows = {s: {**asdict(s), "images_per_s": None, "spread": None, "error": None} for s in settings}
    steps: dict[Setting, tuple[Step, torch.Tensor, torch.Tensor]] = {}
    times: dict[Setting, list[float]] = {s: [] for s in settings}
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the run's random stream is not advanced by the probe
        for s in settings:
            try:
                steps[s] = prepare(model, input_size, batch_size, s, "train", device, make_step)
                with cpu_threads(s.threads, CPU):
                    time_steps(*steps[s], WARMUP_STEPS, device)
            except Exception as e:  # noqa: BLE001 - a setting this machine cannot run is a result
                rows[s]["error"] = failure(e)
                steps.pop(s, None)
        for rnd in range(MAX_ROUNDS):
            if rnd >= MIN_ROUNDS and time.perf_counter() - start > time_cap_s:
                break
            if rnd >= STABLE_ROUNDS and all(spread(times[s]) < STABLE_SPREAD for s in steps):
                break
            for s in list(steps):
                with cpu_threads(s.threads, CPU):
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
            rows[s]["spread"] = round(spread(t), 3) if len(t) > 1 else None
    return list(rows.values())


def failure(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:160]
    return f"failed: {type(e).__name__}: {first}".rstrip(": ")


# ------------------------------------------------------------------ the load beside the probe
def cpu_ticks() -> dict[int, int] | None:
    """CPU clock ticks (user + system) of every process but this one, from /proc; None elsewhere."""
    proc, me = Path("/proc"), os.getpid()
    if not (proc / "self" / "stat").exists():
        return None
    ticks = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks


def other_load(before: dict[int, int] | None, after: dict[int, int] | None, seconds: float
               ) -> tuple[int, float] | None:
    """(processes, share of one core they used together) between two :func:`cpu_ticks`, counting
    those that used at least 5% of a core; children of this process count as others."""
    if before is None or after is None or seconds <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    used = [(after[p] - before.get(p, 0)) / hz / seconds for p in after]  # a new process: all of it
    busy = [u for u in used if u >= 0.05]
    return len(busy), sum(busy)


def load_text(load: tuple[int, float] | None) -> str:
    """``the machine is busy: 3 other processes use 140% CPU``, or "" when they use little."""
    if not load or load[1] < BUSY_CPU:
        return ""
    n, share = load
    return f"the machine is busy: {n} other process{'es' * (n != 1)} use {share:.0%} CPU"


def verdict_doubt(spread_: float | None, load: str) -> str:
    """Why a probe's result is no verdict to cache ("" when it is one)."""
    noisy = spread_ is not None and spread_ >= STABLE_SPREAD
    if not noisy and not load:
        return ""
    why = [load] if load else []
    if noisy:
        why.append(f"its step times spread {spread_:.0%} (a verdict needs under {STABLE_SPREAD:.0%})")
    return "not cached: " + "; ".join(why)


def choose(model: nn.Module, input_size: Sequence[int], batch_size: int, device: torch.device, *,
           precision: str, channels_last: bool | None, compile: bool, network: str,
           make_step: StepFactory, run_steps: int | None = None, threads: int | None = None,
           reprobe: bool = False) -> Choice:
    """Resolve ``--precision``, channels_last and the CPU threads for a run. Forced values are
    kept (``threads``: --threads); on a CPU the rest is measured (or read from the cache, unless
    ``reprobe``); on CUDA auto is bf16 where supported, else fp16 with a GradScaler, and MPS runs
    fp32; channels_last auto is off on both. A probe that was no verdict (see
    :func:`verdict_doubt`) is used for this run and not cached; a re-probe's doubt drops the entry."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"unknown --precision {precision!r}; choose auto, fp32, bf16 or fp16")
    if device.type != "cpu":
        chosen = precision if precision != "auto" else gpu_precision(device)
        by = "flag" if precision != "auto" and channels_last is not None else "rule"
        return Choice(chosen, bool(channels_last), compile, by)
    bf16_ok = bf16_native()
    reason = "" if bf16_ok or precision != "auto" else "bf16 not native here"
    counts = thread_candidates(threads)
    threads_by = "flag" if threads else "probe"
    settings = candidates(device, precision, channels_last, compile, bf16_ok, counts)
    if len(settings) == 1:
        s = settings[0]
        return Choice(s.precision, s.channels_last, compile, "flag", reason=reason, threads=s.threads,
                      threads_by=threads_by)
    key = cache_key(network, input_size, batch_size, settings)
    cached = None if reprobe else read_cache().get(key)
    if cached:
        entry = {k: v for k, v in cached.items() if k in Choice.__dataclass_fields__}
        return Choice(**{**entry, "chosen_by": "cache", "reason": reason,
                         "threads_by": "flag" if threads else "cache", "cached": True})
    least = len(settings) * (WARMUP_STEPS + MIN_ROUNDS)
    if run_steps is not None and run_steps * MAX_SHARE < least and not reprobe:
        s = next((s for s in settings if s.precision == "fp32" and not s.channels_last), settings[0])
        short = f"a run of {run_steps} steps is too short to probe"
        return Choice(s.precision, s.channels_last, compile, "rule",
                      reason="; ".join(r for r in (short, reason) if r), threads=s.threads or None,
                      threads_by="flag" if threads else "rule")
    start, before = time.perf_counter(), cpu_ticks()
    rows = probe(model, input_size, batch_size, settings, device, make_step, run_steps=run_steps)
    seconds = time.perf_counter() - start
    load = load_text(other_load(before, cpu_ticks(), seconds))
    ok = [r for r in rows if r["images_per_s"]]
    if not ok:
        raise UserError(f"no setting could train here ({rows[0]['error']}); force one with --precision "
                        f"fp32 --no-channels-last")
    best = max(ok, key=lambda r: r["images_per_s"])
    doubt = verdict_doubt(best["spread"], load)
    choice = Choice(best["precision"], best["channels_last"], compile, "probe", best["images_per_s"],
                    "; ".join(r for r in (reason, doubt) if r), rows, round(seconds, 2),
                    threads=best["threads"] or None, threads_by=threads_by, spread=best["spread"],
                    load=load, cached=not doubt)
    if not doubt:
        write_cache(key, choice, network=network, input_size=input_size, batch_size=batch_size)
    elif reprobe:
        drop_cache(key)
    return choice


def recheck(choice: Choice, live_images_per_s: float) -> bool:
    """Whether a cached choice must be measured again: the run's own first steps ran more than
    RECHECK_RATIO times faster or slower than the cache says (another hour, another load)."""
    if choice.chosen_by != "cache" or not choice.images_per_s or live_images_per_s <= 0:
        return False
    ratio = live_images_per_s / choice.images_per_s
    return ratio > RECHECK_RATIO or ratio < 1 / RECHECK_RATIO


def gpu_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


# ------------------------------------------------------------------ the OpenMP wait policy
# ACTIVE (spinning at barriers) is chosen only where it beats PASSIVE by this much on a quiet
# machine: beside another process on the same cores spinning cost 18-26x (2-core AMD EPYC, Zen 3)
WAIT_MARGIN = 0.05
WAIT_CHILDREN = 2  # child processes per policy, alternated: OpenMP reads the policy only when it loads
WAIT_STEPS = 20  # timed steps in each child
WAIT_START_S = 4.0  # one child's start (interpreter, torch, the network) on a 2-core machine


def plain_step(net: nn.Module, mode: str, precision: str) -> Step:
    """A training step (forward, cross-entropy, backward, SGD) for the wait-policy children: the
    network's kernels and barriers, without the trainer."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    dtype = {"bf16": torch.bfloat16}.get(precision)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
            loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def wait_policy_cost(step_s: float) -> float:
    """Seconds :func:`measure_wait_policy` takes for a step of ``step_s`` seconds."""
    return 2 * WAIT_CHILDREN * (WAIT_START_S + (WARMUP_STEPS + WAIT_STEPS) * step_s)


def measure_wait_policy(spec: dict[str, Any], *, children: int = WAIT_CHILDREN, steps: int = WAIT_STEPS,
                        timeout_s: float = 300.0) -> dict[str, Any]:
    """ACTIVE against PASSIVE, each in ``children`` fresh processes (alternated, so a passing load
    hits both) timing ``steps`` training steps of ``spec`` (model, model_args, input_size,
    batch_size, threads, precision, channels_last). The verdict is ACTIVE only where it is
    WAIT_MARGIN faster on a quiet machine; a noisy or busy measurement picks PASSIVE, the safe
    side under load, and is not cached. Cached verdicts are this machine's (:mod:`resnetkit._omp`)."""
    times: dict[str, list[float]] = {p: [] for p in _omp.POLICIES}
    start, before = time.perf_counter(), cpu_ticks()
    try:
        for _ in range(children):
            for policy in _omp.POLICIES:
                times[policy] += run_wait_child(spec, policy, steps, timeout_s)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return {"policy": _omp.DEFAULT, "cached": False, "reason": f"not measured: {failure(e)}"}
    load = load_text(other_load(before, cpu_ticks(), time.perf_counter() - start))
    speed = {p: spec["batch_size"] / statistics.median(t) for p, t in times.items()}
    spreads = {p: spread(t) for p, t in times.items()}
    doubt = verdict_doubt(max(spreads.values()), load)
    faster = speed["ACTIVE"] / speed["PASSIVE"] - 1
    policy = "ACTIVE" if not doubt and faster > WAIT_MARGIN else "PASSIVE"
    verdict = {"policy": policy, "active_images_per_s": round(speed["ACTIVE"], 1),
               "passive_images_per_s": round(speed["PASSIVE"], 1), "active_gain": round(faster, 3),
               "spread": round(max(spreads.values()), 3), "load": load, "spec": spec,
               "seconds": round(time.perf_counter() - start, 1), "cpu": machine_summary(),
               "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    verdict["reason"] = doubt or (f"ACTIVE {faster:+.0%} against PASSIVE on a quiet machine "
                                  f"(kept only above {WAIT_MARGIN:+.0%})")
    verdict["cached"] = not doubt
    if not doubt:
        _omp.write_verdict(verdict)
    return verdict


def run_wait_child(spec: dict[str, Any], policy: str, steps: int, timeout_s: float) -> list[float]:
    """The step times of one child process under ``policy``."""
    env = {k: v for k, v in os.environ.items() if k != _omp.BY_ENV}
    env[_omp.ENV] = policy
    out = subprocess.run([sys.executable, "-m", "resnetkit.probe", "--wait-child", json.dumps(spec),
                          str(steps)], env=env, capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise subprocess.SubprocessError(f"the {policy} child exited with status {out.returncode}: {last}")
    return [float(t) for t in json.loads(out.stdout.strip().splitlines()[-1])["seconds"]]


def wait_child(spec: dict[str, Any], steps: int) -> dict[str, Any]:
    """In a child: time ``steps`` training steps of ``spec`` under the policy it was started with."""
    torch.set_num_threads(int(spec["threads"]))
    net = create_model(spec["model"], **spec.get("model_args", {}))
    setting = Setting(spec.get("precision", "fp32"), bool(spec.get("channels_last")))
    cpu = torch.device("cpu")
    step, x, y = prepare(net, spec["input_size"], int(spec["batch_size"]), setting, "train", cpu, plain_step)
    time_steps(step, x, y, WARMUP_STEPS, cpu)
    return {"policy": os.environ.get(_omp.ENV), "seconds": [time_steps(step, x, y, 1, cpu) for _ in range(steps)]}


def wait_policy_for_run(choice: Choice, spec: dict[str, Any], run_s: float | None,
                        force: bool = False) -> dict[str, Any]:
    """This process's wait policy and who chose it (:func:`resnetkit._omp.current`); where only
    the default stands (no verdict yet, or ``force``: --reprobe), the run is long enough to pay
    MAX_SHARE for it (or ``force``) and the machine has more than one core, it is measured now:
    for the runs that follow, since this process read its policy when torch loaded."""
    state = _omp.current()
    threads = max(1, torch.get_num_threads(), choice.threads or 0)
    if state["chosen_by"] != "default" or threads < 2 or not choice.images_per_s:
        return state
    cost = wait_policy_cost(spec["batch_size"] / choice.images_per_s)
    if not force and (run_s is None or run_s * MAX_SHARE < cost):
        return {**state, "note": state["note"] + f"; not measured: the run is too short to pay ~{cost:.0f} s for it"}
    verdict = measure_wait_policy({**spec, "threads": threads})
    how = "measured now for the next runs" if verdict["cached"] else "measured, no verdict"
    return {**state, "measured": verdict, "note": f"{state['note']}; {how}: {verdict['policy']} "
                                                  f"({verdict['reason']})"}


def wait_record(state: dict[str, Any] | None) -> dict[str, Any]:
    """report.json's account of the wait policy (``state``: :func:`wait_policy_for_run`'s)."""
    state = state or _omp.current()
    return {"omp_wait_policy": state["policy"], "wait_policy_chosen_by": state["chosen_by"],
            "wait_policy_note": state.get("note", ""),
            **({"wait_policy_measured": state["measured"]} if state.get("measured") else {})}


def wait_line(state: dict[str, Any] | None) -> str:
    """``OpenMP wait policy: PASSIVE (default: the default until measured on this machine)``."""
    state = state or _omp.current()
    return f"OpenMP wait policy: {state['policy'] or 'OpenMP default'} ({state['chosen_by']}: {state.get('note', '')})"


# ------------------------------------------------------------------ the cache
def cache_file() -> Path:
    """probe.json in $RESNETKIT_CACHE (the folder the decode cache uses too), else in the user
    cache folder."""
    return _omp.cache_dir() / "probe.json"


def cache_key(network: str, input_size: Sequence[int], batch_size: int, settings: Sequence[Setting]) -> str:
    """Everything that changes which setting is fastest: the chip, the software, the work. The
    thread counts are among the candidates' names."""
    parts = {"cpu": cpu_model(), "flags": sorted(cpu_flags() or ()), "torch": torch.__version__,
             "cores": _omp.usable_cores(), "network": network, "input": list(input_size),
             "batch": batch_size, "candidates": [s.name() for s in settings], "v": CACHE_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def read_cache() -> dict[str, Any]:
    """The cached choices; an unreadable or foreign file counts as empty (it is only a cache)."""
    return read_json_dict(cache_file())


def write_cache(key: str, choice: Choice, **what: Any) -> None:
    """Store ``choice`` under ``key``, with ``what`` it was measured on (network, input, batch:
    ``resnetkit bench --probe`` lists them)."""
    entry = {k: v for k, v in asdict(choice).items() if k not in ("chosen_by", "reason", "threads_by", "cached")}
    entry.update({k: list(v) if isinstance(v, tuple) else v for k, v in what.items()},
                 cpu=machine_summary(), written=time.strftime("%Y-%m-%d %H:%M:%S"))
    _write({**read_cache(), key: entry})


def drop_cache(key: str) -> None:
    cache = read_cache()
    if cache.pop(key, None) is not None:
        _write(cache)


def _write(cache: dict[str, Any]) -> None:
    with contextlib.suppress(OSError, UserError):  # a read-only home only costs the next run a probe
        path = cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, cache)


if __name__ == "__main__":  # python -m resnetkit.probe --wait-child SPEC STEPS (measure_wait_policy's children)
    if len(sys.argv) != 4 or sys.argv[1] != "--wait-child":
        raise SystemExit("usage: python -m resnetkit.probe --wait-child SPEC_JSON STEPS")
    print(json.dumps(wait_child(json.loads(sys.argv[2]), int(sys.argv[3]))))
