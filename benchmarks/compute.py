"""The ``compute`` section of benchmarks/run.py: training compute (TFLOP) against test accuracy.

Each row is one configuration of the fast recipe (a lever on top of it), trained by
``resnetkit train --recipe fast --dataset D --seed S --eval-every E ARGS`` in a subprocess. ``--eval-every E`` with E the
number of epochs evaluates only the final epoch: the accuracy is the final epoch's test
accuracy, no checkpoint chosen on the test split (the ``--val-size 0`` rule).

Training compute = 3 x forward FLOPs (torch.utils.flop_counter, one image, at each epoch's input
size) x images trained per epoch, summed over the epochs: the backward pass costs about twice the
forward (Kaplan et al. 2020, arXiv:2001.08361, section 2.1). It depends on no machine.

Run folders go to ``--runs DIR`` (default: a temporary folder); a folder that already holds a
finished run with the same arguments is read, not trained again, so a long ladder can be run
piecewise and the table rewritten from everything at the end.
"""
from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

# (test accuracy, TFLOP) the fast recipe must reach within: issue 13, half of the earlier recipe
TARGETS = {"fashion-mnist": (0.930, 28.0), "mnist": (0.995, 6.0)}
# The numerics of every row (speed is not measured here), and one thread: on a shared, loaded
# machine two threads of one run spend their time waiting for each other at every operation.
# --val-size 0: train on the whole split, no selection, the last epoch is the result.
FP32 = ["--val-size", "0", "--precision", "fp32", "--channels-last", "--threads", "1"]


@dataclass(frozen=True)
class Lever:
    dataset: str
    name: str  # what this row adds to the one before
    args: tuple[str, ...]  # the whole argument list after the recipe, --epochs included
    seeds: int = 3  # 1: a screen (one seed), reported as such

    @property
    def epochs(self) -> int:
        return int(self.args[self.args.index("--epochs") + 1])

    def argv(self, seed: int, out: str) -> list[str]:
        return ["train", "--recipe", "fast", "--dataset", self.dataset, "--seed", str(seed),
                "--eval-every", str(self.epochs), *self.args, *FP32, "--out", out]


W24 = ("--model-arg", "widths=[24,48,96]")
SUB = ("--subset", "10000")
LADDER: tuple[Lever, ...] = (
    Lever("mnist", "earlier fast recipe, 2 epochs", ("--epochs", "2"), seeds=1),
    Lever("mnist", "widths 24/48/96, 3 epochs", ("--epochs", "3", *W24), seeds=1),
    Lever("mnist", "widths 24/48/96, 4 epochs, 16->28 px, EMA 0.99",
          ("--epochs", "4", *W24, "--min-img-size", "16", "--ema", "0.99"), seeds=1),
    Lever("mnist", "2 epochs, 20->28 px, EMA 0.99",
          ("--epochs", "2", "--min-img-size", "20", "--progressive-until", "1", "--ema", "0.99"), seeds=1),
    Lever("mnist", "widths 24/48/96, 4 epochs, 12->28 px, EMA 0.99",
          ("--epochs", "4", *W24, "--min-img-size", "12", "--ema", "0.99")),
    # screens on a 10,000-image subset (a sixth of the compute of the rows above), one seed
    Lever("mnist", "subset 10k: widths 24/48/96, 4 epochs, 12->28 px, EMA 0.99",
          (*SUB, "--epochs", "4", *W24, "--min-img-size", "12", "--ema", "0.99"), seeds=1),
    Lever("mnist", "subset 10k: widths 24/48/96, 3 epochs at 28 px, EMA 0.99",
          (*SUB, "--epochs", "3", *W24, "--ema", "0.99"), seeds=1),
    Lever("mnist", "subset 10k: 4 epochs, 12->28 px, EMA, --schedule linear",
          (*SUB, "--epochs", "4", *W24, "--min-img-size", "12", "--ema", "0.99", "--schedule", "linear",
           "--warmup-epochs", "0.5"), seeds=1),
    Lever("mnist", "subset 10k: 4 epochs, 12->28 px, EMA, batch 128, lr 0.1",
          (*SUB, "--epochs", "4", *W24, "--min-img-size", "12", "--ema", "0.99", "--batch-size", "128",
           "--lr", "0.1"), seeds=1),
    Lever("mnist", "subset 10k: widths 32/64/128, 2 epochs, 20->28 px, EMA 0.99",
          (*SUB, "--epochs", "2", "--min-img-size", "20", "--progressive-until", "1", "--ema", "0.99"),
          seeds=1),
    Lever("mnist", "same, --schedule linear (to zero, warmup 0.5 epoch)",
          ("--epochs", "4", *W24, "--min-img-size", "12", "--ema", "0.99", "--schedule", "linear",
           "--warmup-epochs", "0.5"), seeds=1),
    Lever("mnist", "same, batch 128, lr 0.1",
          ("--epochs", "4", *W24, "--min-img-size", "12", "--ema", "0.99", "--batch-size", "128",
           "--lr", "0.1"), seeds=1),
    Lever("mnist", "widths 24/48/96, 3 epochs at 28 px, EMA 0.99",
          ("--epochs", "3", *W24, "--ema", "0.99"), seeds=1),
    Lever("fashion-mnist", "12 epochs, 12->28 px",
          ("--epochs", "12", "--min-img-size", "12"), seeds=1),
    Lever("fashion-mnist", "12 epochs, 12->28 px, EMA 0.99",
          ("--epochs", "12", "--min-img-size", "12", "--ema", "0.99")),
)

@lru_cache(maxsize=None)
def forward_flops(arch: str, model_args: str, size: int) -> int:
    """FLOPs of one forward pass of one image at size x size (model_args: JSON of the builder's)."""
    # imported here: a process that only launches runs stays small (no torch in it)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from resnetkit.models import create_model

    kwargs = json.loads(model_args)
    model = create_model(arch, **kwargs).eval()
    x = torch.zeros(1, kwargs.get("in_chans", 3), size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def run_tflop(run_dir: Path) -> float:
    """Training compute of a finished run, from its checkpoint metadata and metrics.jsonl."""
    from resnetkit.checkpoint import read_metadata

    meta, _ = read_metadata(run_dir / "last.safetensors")
    report = json.loads((run_dir / "report.json").read_text())
    images, full = report["data"]["train_size"], report["data"]["img_size"]
    args = json.dumps(meta["model_args"], sort_keys=True)
    total = sum(3 * forward_flops(meta["arch"], args, int(h.get("img_size", full))) * images
                for h in read_metrics(run_dir))
    return total / 1e12


def raw_accuracy(run_dir: Path) -> float:
    """Test accuracy of the run's final raw weights (state.pt), evaluated as its EMA was (same
    TTA): the EMA's gain on the very same trajectory, at no extra training."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from resnetkit.evaluate import evaluate

    path = run_dir / "raw.safetensors"
    if not path.is_file():
        state = torch.load(run_dir / "state.pt", weights_only=True)
        with safe_open(str(run_dir / "last.safetensors"), framework="pt") as f:
            meta = f.metadata()
        save_file({k: v.contiguous() for k, v in state["model"].items()}, str(path), metadata=meta)
    return float(evaluate(path)["top1"])


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def train_once(lever: Lever, seed: int, runs: Path) -> tuple[float, float, float | None]:
    """(TFLOP, final-epoch test accuracy, that of the raw weights with --ema) of one seed,
    trained now or read from ``runs``."""
    out = runs / lever.dataset / slug(lever.name) / f"seed{seed}"
    argv = lever.argv(seed, str(out))
    done = out / "report.json"
    # the same arguments but for --out (the last two): the folder may have moved since
    if not (done.is_file() and (out / "argv.json").is_file()
            and json.loads((out / "argv.json").read_text())[:-2] == argv[:-2]):
        if out.exists():
            raise RuntimeError(f"{out} holds another or an unfinished run; remove it")
        out.parent.mkdir(parents=True, exist_ok=True)
        log = out.parent / f"seed{seed}.log"
        with log.open("w") as f:
            rc = subprocess.run([sys.executable, "-m", "resnetkit", *argv], stdout=f,
                                stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"resnetkit {shlex.join(argv)} exited {rc}:\n{tail}")
        (out / "argv.json").write_text(json.dumps(argv))
    # report.json's one test pass of the final epoch (only that epoch was evaluated)
    acc = float(json.loads(done.read_text())["top1"])
    raw = raw_accuracy(out) if "--ema" in lever.args else None
    return run_tflop(out), acc, raw


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def row(lever: Lever, results: Sequence[tuple[int, float, float, float | None]]) -> str:
    acc_target, tflop_target = TARGETS[lever.dataset]
    tflop = statistics.median(t for _, t, _, _ in results)
    accs = [a for _, _, a, _ in results]
    raws = [r for *_, r in results if r is not None]
    raw = (f"{100 * statistics.median(raws):.2f} ({', '.join(f'{100 * r:.2f}' for r in raws)})"
           if raws else "-")
    med = statistics.median(accs)
    met = "yes" if med >= acc_target and tflop <= tflop_target else "no"
    if len(results) < 3:
        met += " (1 seed: a screen)"
    each = ", ".join(f"{100 * a:.2f}" for a in accs)
    cmd = f"resnetkit train --recipe fast --dataset {lever.dataset} --eval-every {lever.epochs} " \
          f"{shlex.join(lever.args)} {shlex.join(FP32)} --seed S"
    return (f"| {lever.dataset} | {lever.name} | {tflop:.2f} | {each} | {100 * med:.2f} | {raw} | {met} "
            f"| `{cmd}` |")


def cpu_flags() -> str:
    """The CPU features that decide a run's speed (Linux /proc/cpuinfo; empty elsewhere)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return ""
    have = set(line.split(":", 1)[1].split())
    return ", ".join(f"{f}" if f in have else f"no {f}" for f in wanted)


def section_compute(seeds: int | None, runs: Path, cmd: str, levers: Sequence[str] | None = None) -> str:
    """The markdown section; ``levers``: only the rows whose name contains one of these."""
    from _md import provenance

    rows = []
    for lever in LADDER:
        if levers and not any(part in lever.name for part in levers):
            continue
        n = lever.seeds if lever.seeds < 3 or seeds is None else seeds
        results = []
        for seed in range(n):
            tflop, acc, raw = train_once(lever, seed, runs)
            print(f"  compute: {lever.dataset} | {lever.name} | seed {seed}: {tflop:.2f} TFLOP, "
                  f"{100 * acc:.2f}%", file=sys.stderr, flush=True)
            results.append((seed, tflop, acc, raw))
        rows.append(row(lever, results))
    targets = "; ".join(f"{d}: >= {100 * a:.1f}% within {t:g} TFLOP" for d, (a, t) in TARGETS.items())
    return "\n".join([
        "### Training compute to accuracy: the fast recipe's levers", "",
        provenance(cmd) + (f" CPU flags: {cpu_flags()}." if cpu_flags() else ""), "",
        f"Targets (median of 3 seeds): {targets}. Each row names its configuration on top of the "
        "fast recipe (resnet8, stride-2 stem, stages 32/64/128 unless widths say otherwise, SGD "
        "Nesterov, one-cycle, batch 256, lr 0.2, label smoothing 0.1); rows on a 10,000-image "
        "subset are one-seed screens at a sixth of the compute, to compare levers, not targets. TFLOP: training compute, 3 x forward FLOPs (torch.utils.flop_counter) x "
        "images trained, summed over the epochs at each epoch's input size; it does not depend "
        "on the machine. Accuracy: the final epoch's test accuracy in percent (only that epoch "
        "is evaluated: nothing is chosen on the test split), Fashion-MNIST with the recipe's "
        "flip TTA. Every row runs fp32 + channels_last (one thread) so that the rows differ only in the "
        "lever. Without EMA: the same runs' final raw weights (kept in state.pt), evaluated "
        "the same way: the EMA's gain on one trajectory.", "",
        "| dataset | lever | TFLOP | test accuracy per seed (%) | median (%) | without EMA: median "
        "(per seed) | target met | command |",
        "|---|---|---:|---|---:|---|---|---|", *rows])


def main(argv: Sequence[str] | None = None) -> int:
    """Train one row's seed into --runs (several at once share a machine better than a queue)."""
    import argparse

    p = argparse.ArgumentParser(description="train one seed of one row of the compute ladder")
    p.add_argument("--lever", required=True, help="the row's name, exactly")
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=Path, required=True)
    args = p.parse_args(argv)
    lever = next((lv for lv in LADDER if lv.name == args.lever and lv.dataset == args.dataset), None)
    if lever is None:
        p.error(f"no row {args.lever!r} for {args.dataset}")
    tflop, acc, raw = train_once(lever, args.seed, args.runs)
    without = f", raw weights {100 * raw:.2f}%" if raw is not None else ""
    print(f"{lever.dataset} | {lever.name} | seed {args.seed}: {tflop:.2f} TFLOP, {100 * acc:.2f}%{without}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
