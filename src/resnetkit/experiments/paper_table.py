"""He et al. 2015 (arXiv:1512.03385), Table 6: ResNet-20/32/44/56/110 on CIFAR-10, runnable.

Each net of the table trains with the schedule of section 4.2, through
:func:`resnetkit.training.train` as the degradation experiment does (one run folder per net):
SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 4 px pad-and-crop plus flip, lr divided
by 10 at 32k and 48k iterations, stop at 64k. ``iterations`` shortens it (the drops stay at 50%
and 75% of the run). The paper's final nets train on all 50k training images with a schedule
fixed earlier on a 45k/5k split, so the runs hold out nothing (``--val-size 0``) and report the
last epoch: the test split is read once per net and chooses nothing.

With ``time_budget`` each net trains in a process of its own (``resnetkit train --time-budget``
counts the whole process), whose budget fits the steps that fit; the schedule is stretched over
those steps, and the table says how far each net got against the paper's 64k iterations. An
error from a shortened run is not the paper's number and the table says so.

Writes ``table.md`` and ``report.json`` into the output folder. What still differs from the
paper: Nesterov momentum, no weight decay on BatchNorm and biases, reflect padding, mean/std
normalisation instead of per-pixel mean subtraction, ResNet-110's warm-up (a linear one epoch
instead of lr 0.01 until train error is under 80%), and, from the shared copy of CIFAR-10, JPEG
images (lossy) instead of the original pixels.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from .. import report as reports
from .._io import write_json_atomic, write_text_atomic
from ..config import RunConfig
from ..errors import UserError
from ..runtime import resolve_device
from ..training import train
from ..training.budget import format_duration, parse_duration
from .degradation import count_params

# Table 6 of the paper: test error (%) and parameters (millions). ResNet-110's 6.43 is the best
# of 5 runs (their mean: 6.61 +- 0.16); the others are one run each.
PAPER_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
PAPER_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}
PAPER_ITERATIONS = 64_000
# ResNet-110 warms up at lr 0.01 for about 400 iterations (section 4.2): about one epoch of 391
WARMUP_EPOCHS = {110: 1.0}


@dataclass(frozen=True)
class Settings:
    """One schedule for every net of the table (only the depth differs)."""

    depths: tuple[int, ...] = tuple(PAPER_ERROR)
    iterations: int = PAPER_ITERATIONS  # lr / 10 at 50% and 75% of them: 32k and 48k of 64k
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 1e-4
    time_budget: float | None = None  # seconds per net, for its whole process; None: run to the end
    subset: int | None = None  # training images (stratified); None: all 50,000
    precision: str = "auto"
    channels_last: bool | None = None  # None: the speed probe decides on a CPU
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None

    @property
    def shortened(self) -> bool:
        return self.iterations != PAPER_ITERATIONS or bool(self.subset)


def parse_depths(text: str | Sequence[int] | None) -> tuple[int, ...]:
    """"20,56" -> (20, 56): depths of Table 6 only, in the table's order."""
    if text is None:
        return tuple(PAPER_ERROR)
    items = [s.strip() for s in text.split(",") if s.strip()] if isinstance(text, str) else list(text)
    hint = f"the table's depths are {', '.join(map(str, PAPER_ERROR))}"
    try:
        depths = {int(d) for d in items}
    except (TypeError, ValueError):
        raise UserError(f"--depths {text!r}: give comma-separated integers, e.g. 20,56; {hint}") from None
    bad = sorted(depths - set(PAPER_ERROR))
    if bad or not depths:
        raise UserError(f"--depths: {', '.join(map(str, bad)) or 'none given'} not in Table 6; {hint}")
    return tuple(d for d in PAPER_ERROR if d in depths)


def settings(**changes: Any) -> Settings:
    """The paper's settings with ``changes`` (None values ignored), checked."""
    given = {k: v for k, v in changes.items() if v is not None}
    given["depths"] = parse_depths(given.get("depths"))
    if "time_budget" in given:
        given["time_budget"] = parse_duration(given["time_budget"])
    for key in ("iterations", "batch_size"):
        if key in given and (not isinstance(given[key], int) or given[key] < 1):
            raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {given[key]!r}")
    if "subset" in given and given["subset"] == 0:
        given["subset"] = None  # 0: the whole training split, as the degradation experiment reads it
    return replace(Settings(), **given)


def run_config(s: Settings, depth: int, run_dir: Path) -> RunConfig:
    """The RunConfig of one net. ``epochs`` is an upper bound: --max-steps ends the run at
    ``iterations`` whatever the number of batches per epoch (164 epochs for 50k images)."""
    return RunConfig(model=f"resnet{depth}", dataset="cifar10", data_dir=s.data_dir, subset=s.subset,
                     val_size=0, epochs=s.iterations, max_steps=s.iterations,
                     time_budget=s.time_budget, batch_size=s.batch_size, lr=s.lr, optimizer="sgd",
                     weight_decay=s.weight_decay, schedule="step",
                     warmup_epochs=WARMUP_EPOCHS.get(depth), label_smoothing=0.0, augment="basic",
                     tta=False, precision=s.precision, channels_last=s.channels_last, seed=s.seed,
                     device=s.device, out=str(run_dir))


# ------------------------------------------------------------------ running
@dataclass
class NetRun:
    depth: int
    run_dir: Path
    params: int
    seconds: float  # the run's wall time (the trainer's), also when reused
    test_top1: float
    steps_per_epoch: int
    steps_done: int
    epochs_done: float
    reused: bool = False

    @property
    def name(self) -> str:
        return f"resnet{self.depth}"

    @property
    def test_error(self) -> float:
        return 1.0 - self.test_top1


def settings_key(s: Settings) -> dict[str, Any]:
    """What must match for finished runs in one folder to be reused (not the device or data path)."""
    return {k: v for k, v in asdict(s).items() if k not in ("device", "data_dir", "depths")}


def check_folder(s: Settings, out: Path) -> None:
    """Refuse to mix runs of other settings into one table; remember these settings."""
    path = out / "settings.json"
    key = json.loads(json.dumps(settings_key(s)))  # as JSON stores it: tuples become lists
    if path.is_file():
        saved = json.loads(path.read_text())
        differ = sorted(k for k in set(key) | set(saved) if saved.get(k) != key.get(k))
        if differ:
            raise UserError(f"{out} holds runs with other settings ({', '.join(differ)}); choose another --out")
    write_json_atomic(path, key)


def train_net(s: Settings, depth: int, run_dir: Path, *, verbose: bool = True) -> NetRun:
    """Train one net, or reuse its finished run folder, or resume an interrupted one."""
    reused = (run_dir / "report.json").is_file()
    if reused:
        if verbose:
            print(f"resnet{depth}: reusing the finished run in {run_dir}", flush=True)
    elif s.time_budget is not None:
        train_in_child(s, depth, run_dir, verbose=verbose)
    elif (run_dir / "state.pt").is_file():
        train(RunConfig(resume=str(run_dir), device=s.device, data_dir=s.data_dir), verbose=verbose)
    else:
        train(run_config(s, depth, run_dir), verbose=verbose)
    return read_run(depth, run_dir, reused)


def train_in_child(s: Settings, depth: int, run_dir: Path, *, verbose: bool) -> None:
    """``resnetkit train --time-budget`` in a new process: the budget counts a whole process
    (start-up, data, probe, training, the test pass), so each net gets one of its own."""
    if (run_dir / "state.pt").is_file():
        args = ["--resume", str(run_dir), "--device", s.device]
        args += ["--data-dir", s.data_dir] if s.data_dir else []
    else:
        cfg = {k: v for k, v in run_config(s, depth, run_dir).to_dict().items()
               if v is not None and v != RunConfig.__dataclass_fields__[k].default}
        fd, name = tempfile.mkstemp(prefix=f"resnet{depth}-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)
        args = ["--config", name]
    try:
        rc = subprocess.run([sys.executable, "-m", "resnetkit", "train", *args],
                            stdout=None if verbose else subprocess.DEVNULL,
                            stderr=None if verbose else subprocess.STDOUT).returncode
    finally:
        if "--config" in args:
            os.unlink(args[1])
    if rc != 0:
        raise UserError(f"resnetkit train for resnet{depth} exited with status {rc}"
                        f"{' (its message is above)' if verbose else ''}")


def read_run(depth: int, run_dir: Path, reused: bool) -> NetRun:
    """A finished run's numbers: test top-1, wall time and how many steps it trained."""
    report = json.loads((run_dir / "report.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    images = int((report.get("data") or {}).get("train_size") or 0)
    per_epoch = max(1, math.ceil(images / cfg["batch_size"]))
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    # the resolved plan: whole epochs, the last one ended at --max-steps where that comes first
    steps = cfg["epochs"] * per_epoch
    steps = min(steps, cfg["max_steps"]) if cfg.get("max_steps") else steps
    steps = min(steps, len(history) * per_epoch)  # an early stop would end it sooner
    return NetRun(depth, run_dir, count_params(run_dir), float(report["evidence"]["wall_time_s"]),
                  float(report["top1"]), per_epoch, steps, steps / per_epoch, reused)


def run_paper_table(s: Settings, out: str | Path | None = None, *, verbose: bool = True) -> dict[str, Any]:
    """Train every net of ``s`` and write table.md and report.json into ``out`` (default
    runs/paper-table-<time>). Returns report.json as a dict."""
    out = Path(out) if out else Path("runs") / f"paper-table-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    check_folder(s, out)
    say = print if verbose else (lambda *a, **k: None)
    say(describe(s), flush=True)
    t0 = time.perf_counter()
    runs = []
    for depth in s.depths:
        say(f"\n== resnet{depth} ==", flush=True)
        runs.append(train_net(s, depth, out / f"resnet{depth}", verbose=verbose))
    report = build_report(s, runs, wall=time.perf_counter() - t0)
    text = f"{describe(s)}\n\n{format_table(s, runs)}\n\n{report['summary']}\n"
    write_text_atomic(out / "table.md", text)
    write_json_atomic(out / "report.json", report)
    say(f"\n{format_table(s, runs)}\n\n{report['summary']}\nreport {out / 'report.json'}", flush=True)
    return report


def describe(s: Settings) -> str:
    data = f"{s.subset:,} training images" if s.subset else "the whole training split (50,000 images)"
    drops = f"{s.iterations // 2:,} and {3 * s.iterations // 4:,}"
    budget = f"; at most {format_duration(s.time_budget)} per net (whole process)" if s.time_budget else ""
    short = (f" (the paper: {PAPER_ITERATIONS:,} iterations on all 50,000 images)"
             if s.shortened else "")
    return (f"He et al. 2015 Table 6: CIFAR-10, {data}, nothing held out; {s.iterations:,} iterations "
            f"of batch {s.batch_size}{short}, SGD lr {s.lr:g} / 10 at {drops}, momentum 0.9, "
            f"wd {s.weight_decay:g}; seed {s.seed}; depths {', '.join(map(str, s.depths))}{budget}")


# ------------------------------------------------------------------ the table
def progress(s: Settings, r: NetRun) -> str:
    """How far a net got: epochs and iterations done of those its schedule planned."""
    planned = s.iterations / r.steps_per_epoch
    return (f"{r.epochs_done:.1f} of {planned:.1f} epochs ({r.steps_done:,} of {s.iterations:,} "
            f"iterations)")


def complete(s: Settings, r: NetRun) -> bool:
    return r.steps_done >= s.iterations


def format_table(s: Settings, runs: Sequence[NetRun]) -> str:
    lines = ["| net | params (paper) | trained | test error | He et al. Table 6 | difference | seconds |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in runs:
        paper = PAPER_ERROR[r.depth]
        lines.append(f"| {r.name} | {r.params / 1e6:.2f}M ({PAPER_PARAMS_M[r.depth]:g}M) | {progress(s, r)} "
                     f"| {100 * r.test_error:.2f}% | {paper:.2f}% | {100 * r.test_error - paper:+.2f} "
                     f"| {r.seconds:.0f} |")
    return "\n".join(lines)


def summary(s: Settings, runs: Sequence[NetRun]) -> str:
    short = [r for r in runs if not complete(s, r)]
    lines = []
    if s.shortened:
        lines.append(f"A shortened schedule ({s.iterations:,} iterations"
                     f"{f', {s.subset:,} images' if s.subset else ''}): the errors are not comparable "
                     f"with the paper's.")
    for r in short:
        lines.append(f"{r.name} stopped at its budget ({format_duration(s.time_budget or 0)}): "
                     f"{progress(s, r)}, its schedule stretched over them; not the paper's run.")
    if not lines:
        lines.append("Every net ran the paper's full schedule.")
    return "\n".join(lines)


def build_report(s: Settings, runs: Sequence[NetRun], wall: float) -> dict[str, Any]:
    nets = {r.name: {"depth": r.depth, "run_dir": r.run_dir.name, "params": r.params,
                     "paper_params_m": PAPER_PARAMS_M[r.depth], "test_error": r.test_error,
                     "paper_test_error": PAPER_ERROR[r.depth] / 100, "steps_done": r.steps_done,
                     "steps_planned": s.iterations, "epochs_done": round(r.epochs_done, 3),
                     "epochs_planned": round(s.iterations / r.steps_per_epoch, 3),
                     "complete": complete(s, r), "seconds": round(r.seconds, 1), "reused": r.reused}
            for r in runs}
    return {"experiment": "paper-table", "paper": "He et al. 2015, arXiv:1512.03385, Table 6",
            "settings": asdict(s), "nets": nets, "summary": summary(s, runs),
            "train_seconds": round(sum(r.seconds for r in runs), 1),
            "evidence": reports.evidence(device=resolve_device(s.device), seed=s.seed,
                                         precision=s.precision, wall_time_s=wall)}
