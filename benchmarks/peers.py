"""The ``peers`` section of BENCHMARKS.md: resnetkit against fastai, timm and Keras on one CPU.

What a user would pick instead of resnetkit, trained the way each one's documentation teaches
(benchmarks/_peer_train.py says which settings and why), on the same data and machine:
Fashion-MNIST from the IDX files at a 3-minute and CIFAR-10 from the JPEG folder at a 10-minute
budget for the whole process. Every run is a new process timed from start to exit by this
script; resnetkit's is ``resnetkit train --dataset D --recipe fast --time-budget B --seed S``.
The runs alternate between the tools (the first tool rotates with the seed), so a slow spell of
a shared machine hits them all. Each tool also runs at shares of the budget (``--ladder``, by
default a quarter and a half): the time a tool needs to reach another's accuracy is the
shortest of its budgets whose median accuracy reaches it (an upper bound; every run reads the
test split once, at its end, and chooses nothing on it). A peer that cannot finish one epoch in
the budget trains the steps that fit (its schedule over them) and also runs one whole epoch,
whose time and accuracy the table reports.

The peers go into a scratch virtualenv this script makes (``--venv``, default
~/.cache/resnetkit/peers-venv), at the versions of PINS, on this environment's torch: a .pth
file puts this environment's site-packages on the venv's path, and a constraints file pins
torch, torchvision, numpy and pillow to the versions installed here, so pip uses them or fails;
it never downloads another torch. The data is decoded once into uint8 arrays for the peers
(untimed); resnetkit reads the IDX files and JPEGs itself, and an untimed ``--dry-run`` of each
dataset first fills its decode and speed-probe caches, as a user's second run finds them.

    python benchmarks/peers.py                     # install, run everything, write BENCHMARKS.md
    python benchmarks/peers.py --datasets fashion-mnist --seeds 1 --ladder 0.5
    python benchmarks/peers.py --dry-run           # toy data, no install: every importable peer

``--dry-run`` makes a few hundred fake images in the real on-disk formats in a temporary folder,
installs nothing, runs each peer importable by this interpreter (saying which are not) and
resnetkit for a few steps, and prints the section: its numbers are no result.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import json
import os
import shlex
import site
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _md and _peer_train, whether run as a script or imported

from _md import cpu_flags_text, write_section  # noqa: E402

PINS = {"fastai": "2.8.12", "timm": "1.0.31", "keras": "3.15.1"}
PEERS = tuple(PINS)
TOOLS = ("resnetkit", *PEERS)
BUDGETS = {"fashion-mnist": 180.0, "cifar10": 600.0}  # seconds for the whole process
# resnetkit's packages that the peers must share, never reinstall (pinned in the constraints)
SHARED = ("torch", "torchvision", "numpy", "pillow")
DEFAULT_MD = HERE.parent / "BENCHMARKS.md"
DEFAULT_VENV = Path("~/.cache/resnetkit/peers-venv").expanduser()
DRY_NOTE = "**--dry-run: toy data, a few steps; these numbers are not a result.**"
TOY_STEPS = 3  # --dry-run: optimizer steps per run
TOY_BATCH = 32  # --dry-run: a few steps per epoch of the toy data, whatever a recipe's batch


def say(text: str) -> None:
    print(f"  peers: {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the scratch virtualenv
def base_python() -> str:
    """The interpreter this environment's venv was made from (a venv of a venv would chain)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def constraints() -> str:
    lines = []
    for name in SHARED:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_site(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out)


def ensure_peers(venv: Path, peers: Sequence[str]) -> dict[str, str]:
    """Make (or reuse) the scratch venv with ``peers`` at PINS on this environment's torch.
    Returns {peer: why it is missing} for those that could not be installed."""
    python = venv_python(venv)
    stamp = venv / "resnetkit-peers.json"
    want = {"pins": {p: PINS[p] for p in peers}, "constraints": constraints(),
            "base": sorted(site.getsitepackages())}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        say(f"reusing the peers' venv {venv}")
        return json.loads((venv / "resnetkit-missing.json").read_text())
    if not python.exists():
        say(f"making the peers' venv {venv}")
        subprocess.run([base_python(), "-m", "venv", str(venv)], check=True)
    # this environment's packages (torch above all) after the venv's own: pip sees them installed
    (venv_site(python) / "zz-resnetkit-env.pth").write_text("\n".join(want["base"]) + "\n")
    pins = venv / "constraints.txt"
    pins.write_text(want["constraints"])
    missing = {}
    for peer in peers:  # one at a time: a peer that does not fit (Keras) drops alone
        say(f"installing {peer}=={PINS[peer]} (constraints: {want['constraints'].split()})")
        r = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(pins),
                            f"{peer}=={PINS[peer]}"], capture_output=True, text=True)
        if r.returncode != 0:
            missing[peer] = "pip could not install it on this torch: " + r.stderr.strip().splitlines()[-1]
            say(f"{peer}: {missing[peer]}")
    check_shared_torch(python)
    (venv / "resnetkit-missing.json").write_text(json.dumps(missing))
    stamp.write_text(json.dumps(want))
    return missing


def check_shared_torch(python: Path) -> None:
    """The venv imports this environment's torch file, not a copy of its own."""
    import torch

    there = subprocess.run([str(python), "-c", "import torch; print(torch.__file__)"], check=True,
                           capture_output=True, text=True).stdout.strip()
    if Path(there).resolve() != Path(torch.__file__).resolve():
        raise RuntimeError(f"the peers' venv imports another torch ({there}); remove the venv and rerun")


def importable(python: str, peer: str) -> bool:
    if python == sys.executable:
        return importlib.util.find_spec(peer) is not None
    return subprocess.run([python, "-c", f"import {peer}"], capture_output=True,
                          env=child_env()).returncode == 0


def child_env() -> dict[str, str]:
    return {**os.environ, "KERAS_BACKEND": "torch", "PYTHONWARNINGS": "ignore"}


# ------------------------------------------------------------------ data
def idx(path: Path) -> Any:
    """An uncompressed IDX file as a numpy array (big-endian header: magic, then the dims)."""
    import numpy as np

    raw = path.read_bytes()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def jpeg_split(folder: Path) -> tuple[Any, Any]:
    """An ImageFolder split (classes in sorted order, as torchvision numbers them) as arrays."""
    import numpy as np
    from PIL import Image

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((folder / name).glob("*.jpg")):
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def write_arrays(dataset: str, root: Path, dest: Path) -> Path:
    """The dataset as the peers read it: uint8 NHWC train and test arrays in one .npz."""
    import numpy as np

    if dataset == "fashion-mnist":
        raw = root / "FashionMNIST" / "raw"
        arrays = {f"x_{s}": idx(raw / f"{p}-images-idx3-ubyte")[..., None] for s, p in (("train", "train"), ("test", "t10k"))}
        arrays.update({f"y_{s}": idx(raw / f"{p}-labels-idx1-ubyte").astype(np.int64)
                       for s, p in (("train", "train"), ("test", "t10k"))})
    else:
        arrays = {}
        for split in ("train", "test"):
            arrays[f"x_{split}"], arrays[f"y_{split}"] = jpeg_split(root / "cifar10-images" / split)
    path = dest / f"{dataset}.npz"
    np.savez(path, **arrays)
    return path


def check_data(root: Path | None, datasets: Iterable[str]) -> Path:
    need = {"fashion-mnist": "FashionMNIST/raw/train-images-idx3-ubyte", "cifar10": "cifar10-images/train"}
    missing = [need[d] for d in datasets if root is None or not (root / need[d]).exists()]
    if missing:
        raise SystemExit(f"peers.py: error: no {', '.join(missing)} under {root or '$RESNETKIT_DATA (unset)'}; "
                         f"give --data-dir (nothing is downloaded)")
    return root  # type: ignore[return-value]


def toy_data(root: Path) -> Path:
    """A few hundred random images in the real formats: Fashion-MNIST IDX files and a CIFAR-10
    JPEG folder (20 train and 10 test images per class)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 200), ("t10k", 100)):
        x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + b"".join(
            v.to_bytes(4, "big") for v in (n, 28, 28)) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + y.tobytes())
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split, n in (("train", 20), ("test", 10)):
        for name in names:
            folder = root / "cifar10-images" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    folder / f"{i:04d}.jpg", quality=75)
    return root


# ------------------------------------------------------------------ runs
@dataclass
class Run:
    tool: str
    dataset: str
    seed: int
    budget_s: float | None  # None: the one-epoch run
    wall_s: float
    test_acc: float
    epochs: float  # epochs trained (a fraction where the budget held less than one)
    version: str = ""
    recipe: str = ""
    error: str = ""  # a run that failed (a budget too short for one epoch): its last line


    def key(self) -> tuple[Any, ...]:
        return self.tool, self.dataset, self.seed, self.budget_s


class RunFailed(Exception):
    """A run that exited with an error; ``args[0]``: its last line, ``args[1]``: its wall seconds."""


def timed(cmd: list[str], log: Path) -> float:
    """Wall seconds of ``cmd`` from start to exit (its output into ``log``)."""
    with log.open("w") as f:
        start = time.perf_counter()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env()).returncode
        wall = time.perf_counter() - start
    if rc != 0:
        lines = log.read_text(errors="replace").strip().splitlines() or [f"exit status {rc}"]
        say(f"{shlex.join(cmd)} exited {rc}; its log: {log}")
        raise RunFailed(lines[-1].strip(), wall)
    return wall


def resnetkit_args(dataset: str, budget: float, seed: int, root: Path, out: Path, dry: bool) -> list[str]:
    args = ["train", "--dataset", dataset, "--recipe", "fast", "--time-budget", f"{budget:g}",
            "--seed", str(seed), "--data-dir", str(root), "--out", str(out)]
    return args + (toy_args() if dry else [])


def toy_args() -> list[str]:
    return ["--max-steps", str(TOY_STEPS), "--batch-size", str(TOY_BATCH)]


def run_resnetkit(dataset: str, budget: float, seed: int, root: Path, work: Path, dry: bool) -> Run:
    from resnetkit import __version__

    out = work / f"resnetkit-{dataset}-{budget:g}s-seed{seed}"
    cmd = [sys.executable, "-m", "resnetkit", *resnetkit_args(dataset, budget, seed, root, out, dry)]
    wall = timed(cmd, work / f"{out.name}.log")
    report = json.loads((out / "report.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    images = int(report["data"]["train_size"])
    per_epoch = -(-images // cfg["batch_size"])
    steps = cfg["epochs"] * per_epoch if not cfg.get("max_steps") else min(cfg["max_steps"], cfg["epochs"] * per_epoch)
    return Run("resnetkit", dataset, seed, budget, wall, float(report["top1"]), steps / per_epoch, __version__,
               f"`--recipe fast`: {cfg['model']}, {cfg['optimizer']} lr {cfg['lr']:g}, {cfg['schedule']}, "
               f"batch {cfg['batch_size']}")


def run_peer(python: str, peer: str, dataset: str, budget: float | None, seed: int, arrays: Path,
             work: Path, dry: bool) -> Run:
    name = f"{peer}-{dataset}-{'1epoch' if budget is None else f'{budget:g}s'}-seed{seed}"
    result = work / f"{name}.json"
    cmd = [python, str(HERE / "_peer_train.py"), peer, "--arrays", str(arrays), "--seed", str(seed),
           "--result", str(result)]
    cmd += ["--epochs", "1"] if budget is None else ["--budget", f"{budget:g}"]
    cmd += toy_args() if dry else []
    wall = timed(cmd, work / f"{name}.log")
    r = json.loads(result.read_text())
    return Run(peer, dataset, seed, budget, wall, float(r["test_acc"]), float(r["epochs"]), r["version"], r["recipe"])


def warm_resnetkit(dataset: str, budget: float, root: Path, work: Path) -> None:
    """Untimed: ``resnetkit train --dry-run`` reads the data (filling the decode cache) and runs
    the speed probe (cached), as a user's earlier run would have."""
    cmd = [sys.executable, "-m", "resnetkit", "train", "--dataset", dataset, "--recipe", "fast",
           "--time-budget", f"{budget:g}", "--data-dir", str(root), "--dry-run"]
    try:
        timed(cmd, work / f"warm-{dataset}.log")
    except RunFailed as e:  # the timed run will say it again, in the table
        say(f"warming resnetkit up on {dataset} failed: {e.args[0]}")


class Results:
    """Finished runs, kept in ``runs/results.jsonl`` so that an interrupted benchmark goes on."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "results.jsonl"
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        self.runs = {r.key(): r for r in (Run(**json.loads(line)) for line in lines if line)}

    def get(self, key: tuple[Any, ...]) -> Run | None:
        """A finished run, failed or not (a failed one is not retried)."""
        return self.runs.get(key)

    def ok(self, key: tuple[Any, ...]) -> Run | None:
        run = self.runs.get(key)
        return run if run and not run.error else None

    def add(self, run: Run) -> None:
        self.runs[run.key()] = run
        with self.path.open("a") as f:
            f.write(json.dumps(asdict(run)) + "\n")

    def of(self, tool: str, dataset: str, budget: float | None) -> list[Run]:
        """The runs of one tool at one budget that ended with a result."""
        return [r for r in self.runs.values()
                if (r.tool, r.dataset, r.budget_s) == (tool, dataset, budget) and not r.error]

    def failed(self, dataset: str) -> list[Run]:
        return [r for r in self.runs.values() if r.dataset == dataset and r.error]


# ------------------------------------------------------------------ the benchmark
@dataclass
class Plan:
    datasets: tuple[str, ...]
    tools: tuple[str, ...]
    seeds: int
    ladder: tuple[float, ...]  # shares of the budget, 1.0 last
    dry: bool

    def budgets(self, dataset: str) -> list[float]:
        return [round(BUDGETS[dataset] * f, 1) for f in self.ladder]

    def seconds(self) -> float:
        """The sum of the budgets the plan runs (the one-epoch runs and the installation come on top)."""
        return sum(sum(self.budgets(d)) * len(self.tools) * self.seeds for d in self.datasets)


def run_all(plan: Plan, python: str, root: Path, work: Path, results: Results) -> None:
    for dataset in plan.datasets:
        arrays = write_arrays(dataset, root, work) if set(plan.tools) - {"resnetkit"} else work
        if not plan.dry:
            warm_resnetkit(dataset, BUDGETS[dataset], root, work)
        for seed in range(plan.seeds):
            for budget in plan.budgets(dataset):
                order = plan.tools[seed % len(plan.tools):] + plan.tools[:seed % len(plan.tools)]
                for tool in order:
                    if results.get((tool, dataset, seed, budget)):
                        continue
                    say(f"{dataset} seed {seed}: {tool} at {budget:g} s ...")
                    try:
                        run = (run_resnetkit(dataset, budget, seed, root, work, plan.dry) if tool == "resnetkit"
                               else run_peer(python, tool, dataset, budget, seed, arrays, work, plan.dry))
                    except RunFailed as e:
                        run = Run(tool, dataset, seed, budget, e.args[1], 0.0, 0.0, error=e.args[0])
                    say(f"{dataset} seed {seed}: {tool}: {run.wall_s:.1f} s, "
                        + (f"failed: {run.error}" if run.error else
                           f"{100 * run.test_acc:.2f}%, {run.epochs:.2f} epochs"))
                    results.add(run)
        full = BUDGETS[dataset]
        for peer in (t for t in plan.tools if t != "resnetkit"):
            at_budget = results.of(peer, dataset, full)
            # --dry-run: the one-epoch path once, on the first dataset (its code is the same for both)
            short = (dataset == plan.datasets[0] if plan.dry
                     else at_budget and statistics.median(r.epochs for r in at_budget) < 1)
            if short and not results.get((peer, dataset, 0, None)):
                say(f"{dataset}: {peer} trains one whole epoch (it fits none in {full:g} s)")
                try:
                    results.add(run_peer(python, peer, dataset, None, 0, arrays, work, plan.dry))
                except RunFailed as e:
                    results.add(Run(peer, dataset, 0, None, e.args[1], 0.0, 0.0, error=e.args[0]))


# ------------------------------------------------------------------ the section
def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str, unit: str = "") -> str:
    m, lo, hi = (format(v, fmt) for v in (med(values), min(values), max(values)))
    return f"{m}{unit}" if lo == hi else f"{m}{unit} ({lo}-{hi}{unit})"


def time_to(results: Results, tool: str, dataset: str, budgets: Sequence[float], acc: float) -> str:
    """The shortest budget at which ``tool``'s median accuracy reaches ``acc``: its median wall."""
    for b in sorted(budgets):
        runs = results.of(tool, dataset, b)
        if runs and med([r.test_acc for r in runs]) >= acc:
            return f"<= {med([r.wall_s for r in runs]):.0f} s"
    return f"not in {max(budgets):g} s"


def dataset_table(plan: Plan, results: Results, dataset: str, tools: Sequence[str]) -> list[str]:
    budgets, full = plan.budgets(dataset), BUDGETS[dataset]
    at = {t: results.of(t, dataset, full) for t in tools}
    acc = {t: med([r.test_acc for r in at[t]]) for t in tools}
    head = ("| tool | recipe | test accuracy at the budget | wall s | epochs trained | one epoch: s, accuracy | "
            + " | ".join(f"time to {t}'s" for t in tools) + " |")
    lines = [f"#### {dataset}, {full:g} s budget", "", head, "|---|---|---:|---:|---:|---|" + "---:|" * len(tools)]
    for t in tools:
        runs = at[t]
        one = results.ok((t, dataset, 0, None))
        lines.append(f"| {t} {runs[0].version} | {runs[0].recipe} | {spread([100 * r.test_acc for r in runs], '.2f', '%')} "
                     f"| {spread([r.wall_s for r in runs], '.1f')} | {spread([r.epochs for r in runs], '.2f')} "
                     f"| {f'{one.wall_s:.1f} s, {100 * one.test_acc:.2f}%' if one else '-'} | "
                     + " | ".join("-" if o == t else time_to(results, t, dataset, budgets, acc[o]) for o in tools)
                     + " |")
    lines += ["", *verdict(plan, results, dataset, tools, acc)]
    lines += [f"- failed: {r.tool} {'one epoch' if r.budget_s is None else f'at {r.budget_s:g} s'}, seed "
              f"{r.seed}: {r.error}" for r in results.failed(dataset)]
    return lines


def verdict(plan: Plan, results: Results, dataset: str, tools: Sequence[str], acc: dict[str, float]) -> list[str]:
    """The targets: resnetkit's accuracy is the highest at the budget, and it reaches each peer's
    budget accuracy within half the budget."""
    if "resnetkit" not in tools:
        return []
    full, half = BUDGETS[dataset], round(BUDGETS[dataset] / 2, 1)
    out = []
    for peer in (t for t in tools if t != "resnetkit"):
        ours, theirs = acc["resnetkit"], acc[peer]
        who = "resnetkit higher" if ours > theirs else "a tie" if ours == theirs else f"**{peer} wins this row**"
        line = f"- resnetkit vs {peer}: {100 * ours:.2f}% against {100 * theirs:.2f}% at {full:g} s ({who})"
        runs = results.of("resnetkit", dataset, half)
        if runs:
            reached = med([r.test_acc for r in runs]) >= acc[peer]
            line += (f"; at half the budget ({half:g} s) resnetkit {'reaches' if reached else 'does not reach'} "
                     f"{peer}'s accuracy ({100 * med([r.test_acc for r in runs]):.2f}%)")
        out.append(line + ".")
    return out


def machine_line(cmd: str, dry: bool) -> str:
    """The command, date, CPU model and flags; a real run adds the matmul peaks (provenance)."""
    import datetime
    import platform

    import torch

    from resnetkit.probe import cpu_model

    if not dry:
        from _md import provenance

        return provenance(cmd)
    return (f"`{cmd}` on {datetime.date.today().isoformat()}: {cpu_model()} ({cpu_flags_text()}), "
            f"{os.cpu_count()} cores, torch {torch.__version__.split('+')[0]}, Python {platform.python_version()}.")


def section(plan: Plan, results: Results, cmd: str, skipped: dict[str, str]) -> str:
    tools = [t for t in plan.tools if t not in skipped]
    lines = ["### Against the peers: fastai, timm, Keras", "", machine_line(cmd, plan.dry),
             *([DRY_NOTE] if plan.dry else []),
             "Each run is a new process timed from start to exit (imports, data, training, the one test "
             f"pass). Median over {plan.seeds} seed(s) (min-max). The peers' settings and why: "
             "benchmarks/_peer_train.py. resnetkit: `resnetkit train --dataset fashion-mnist --recipe fast "
             "--time-budget 180 --seed 0` (cifar10: `--time-budget 600`; seeds 0, 1, ...). Time to X's: the shortest of this tool's budgets "
             f"({', '.join(f'{f:g}' for f in plan.ladder)} of the budget) whose median test accuracy reaches "
             "X's at the full budget, as that run's median wall time. One epoch: a peer that fits no "
             "whole epoch in the budget also trains one (seed 0). CIFAR-10 comes from the JPEG copy "
             "(quality 75, lossy), so its accuracies differ a little from the original pixels'."]
    lines += [f"Skipped: {p}: {why}." for p, why in skipped.items()]
    for dataset in plan.datasets:
        have = [t for t in tools if results.of(t, dataset, BUDGETS[dataset])]
        lines += ["", *dataset_table(plan, results, dataset, have)]
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true",
                   help="toy data in a temporary folder, no install, a few steps per run: checks every "
                        "importable peer's code path and resnetkit's")
    p.add_argument("--datasets", default=",".join(BUDGETS), help="comma-separated: fashion-mnist,cifar10")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds per tool and budget (default 3; --dry-run 1)")
    p.add_argument("--ladder", default="0.25,0.5", help="shares of the budget also run, for the time to "
                                                        "accuracy (default 0.25,0.5; --dry-run none)")
    p.add_argument("--data-dir", type=Path, default=None, help="holds FashionMNIST/raw and cifar10-images "
                                                               "(default $RESNETKIT_DATA)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"the peers' virtualenv (default {DEFAULT_VENV})")
    p.add_argument("--runs", type=Path, default=None, metavar="DIR",
                   help="keep run folders, logs and results.jsonl here; finished runs are reused")
    p.add_argument("--write", type=Path, nargs="?", const=DEFAULT_MD, default=None, metavar="FILE",
                   help="markdown file to rewrite (default BENCHMARKS.md); a run without --dry-run "
                        "always writes, a --dry-run only with --write")
    args = p.parse_args(argv)
    args.datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    args.tools = tuple(t.strip() for t in args.tools.split(",") if t.strip())
    for name, values, allowed in (("--datasets", args.datasets, BUDGETS), ("--tools", args.tools, TOOLS)):
        bad = sorted(set(values) - set(allowed))
        if bad or not values:
            p.error(f"{name}: unknown {', '.join(bad) or 'none given'}; choose from {', '.join(allowed)}")
    try:
        shares = {float(f) for f in args.ladder.split(",") if f.strip()}
    except ValueError:
        p.error(f"--ladder takes shares of the budget such as 0.25,0.5, got {args.ladder!r}")
    if any(not 0 < f <= 1 for f in shares):
        p.error("--ladder: each share of the budget is in (0, 1]")
    args.ladder = (1.0,) if args.dry_run else tuple(sorted(shares | {1.0}))
    args.seeds = args.seeds or (1 if args.dry_run else 3)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.write is None and not args.dry_run:
        args.write = DEFAULT_MD
    return args


def this_command(argv: Sequence[str]) -> str:
    """As recorded in BENCHMARKS.md: without --write, --runs, --venv and --data-dir (paths)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0]
        if flag in ("--write", "--runs", "--venv", "--data-dir"):
            skip = "=" not in a and flag != "--write"
            continue
        kept.append(a)
    return "python benchmarks/peers.py" + "".join(f" {shlex.quote(a)}" for a in kept)


def prepare(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The interpreter the peers run in and {peer: why skipped}: --dry-run this one, with the
    peers it can import; else the scratch venv, installed."""
    peers = [t for t in args.tools if t != "resnetkit"]
    if args.dry_run:
        python, missing = sys.executable, {}
    else:
        python, missing = str(venv_python(args.venv)), ensure_peers(args.venv, peers)
    for peer in peers:
        if peer not in missing and not importable(python, peer):
            missing[peer] = "not importable here (--dry-run installs nothing)" if args.dry_run else "not importable"
    for peer, why in missing.items():
        say(f"skipping {peer}: {why}")
    return python, missing


def build(args: argparse.Namespace, cmd: str) -> str:
    """Install (unless --dry-run), run every planned run, and return the section's text."""
    python, skipped = prepare(args)
    tools = tuple(t for t in args.tools if t not in skipped)
    plan = Plan(args.datasets, tools, args.seeds, args.ladder, args.dry_run)
    if not args.dry_run:
        say(f"{len(plan.datasets)} dataset(s) x {len(tools)} tool(s) x {plan.seeds} seed(s) x "
            f"{len(plan.ladder)} budget(s): {plan.seconds() / 3600:.1f} h of budgets, plus the one-epoch "
            f"runs of peers that fit no epoch")
    with tempfile.TemporaryDirectory(prefix="resnetkit-peers-") as tmp:
        work = args.runs or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.dry_run:
            root = toy_data(Path(tmp) / "data")
        else:
            root = check_data(args.data_dir or (Path(os.environ["RESNETKIT_DATA"]) if
                                                os.environ.get("RESNETKIT_DATA") else None), plan.datasets)
        results = Results(work)
        run_all(plan, python, root, work, results)
        return section(plan, results, cmd, skipped)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    text = build(args, this_command(argv))
    print(text, flush=True)
    if args.write:
        write_section(args.write, "peers", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
