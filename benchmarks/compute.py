"""The ``compute`` section of benchmarks/run.py: training compute (TFLOP) against test accuracy.

Each row is one configuration, trained by ``resnetkit train --recipe fast --dataset D --val-size 0
ARGS --seed S`` in a subprocess: the whole training split, no validation split, nothing selected,
so the accuracy is that of the final epoch, evaluated once on the test split (the issue's rule for
a recipe judged on its compute). ARGS spell out every value a row changes (network widths, epochs,
batch, lr, ...), so a row means the same whatever the fast recipe's values are today; the rows
named "the fast recipe" pass no ARGS and measure the recipe as shipped.

Training compute = 3 x forward FLOPs (torch.utils.flop_counter, one image, at each epoch's input
size) x images trained per epoch, summed over the epochs: the backward pass costs about twice the
forward (Kaplan et al. 2020, arXiv:2001.08361, section 2.1). It depends on no machine. Precision
and memory format are the probe's choice on the machine at hand (as a user's run), named per row.

Run folders go to ``--runs DIR/<dataset>/<row>/seed<S>`` (default: a temporary folder); a folder
that already holds a finished run of the same resolved configuration (config.json, apart from the
output folder, the data folder, threads and the speed settings the probe chose) is read, not
trained again, so a long ladder can be run piecewise, rows can run side by side, and the
time-to-accuracy section's runs of the recipe (``run.py --only tta,compute --runs DIR``) are
reused here.
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
# The rule of every row: the whole training split, no selection, the last epoch is the result.
FIXED = ("--val-size", "0")
# Fields of config.json that do not change what a run computes (or that the probe chose).
NOT_COMPARED = frozenset({"out", "data_dir", "threads", "precision", "channels_last", "compile"})
# (and eval_every where neither run has a validation split: there is nothing to evaluate per epoch)
RECIPE_ROW = "the fast recipe"


@dataclass(frozen=True)
class Lever:
    dataset: str
    name: str  # what this row changes
    args: tuple[str, ...] = ()  # every value the row sets; () is the fast recipe as shipped
    seeds: int = 3  # 1: a screen (one seed), reported as such

    def argv(self, seed: int | str, out: str | None = None) -> list[str]:
        return ["train", "--recipe", "fast", "--dataset", self.dataset, *FIXED, *self.args,
                "--seed", str(seed), *(["--out", out] if out else [])]


def run_folder(runs: Path, lever: Lever, seed: int) -> Path:
    return runs / lever.dataset / slug(lever.name) / f"seed{seed}"


# Fashion-MNIST rows at full size from the first epoch (the recipe resizes progressively now)
FULL = ("--min-img-size", "28")
W16 = ("--model-arg", "widths=[16,32,64]")
W24 = ("--model-arg", "widths=[24,48,96]")
W32 = ("--model-arg", "widths=[32,64,128]")
B128 = ("--batch-size", "128")
LADDER: tuple[Lever, ...] = (
    # MNIST, one-seed screens (2026-12-02): width, epochs, batch and lr at about 5-7 TFLOP
    Lever("mnist", "32/64/128, 2 epochs, batch 128, lr 0.1",
          ("--epochs", "2", *W32, *B128, "--lr", "0.1"), seeds=1),
    Lever("mnist", "24/48/96, 3 epochs, batch 128, lr 0.1",
          ("--epochs", "3", *W24, *B128, "--lr", "0.1"), seeds=1),
    Lever("mnist", "16/32/64, 6 epochs, batch 128, lr 0.1",
          ("--epochs", "6", *W16, *B128, "--lr", "0.1"), seeds=1),
    Lever("mnist", "16/32/64, 6 epochs, batch 128, lr 0.1, no augmentation",
          ("--epochs", "6", *W16, *B128, "--lr", "0.1", "--augment", "none"), seeds=1),
    Lever("mnist", "16/32/64, 6 epochs, batch 64, lr 0.05",
          ("--epochs", "6", *W16, "--batch-size", "64", "--lr", "0.05"), seeds=1),
    Lever("mnist", "16/32/64, 6 epochs, batch 128, lr 0.1, zero-init residual",
          ("--epochs", "6", *W16, "--model-arg", "zero_init_residual=true", *B128, "--lr", "0.1"), seeds=1),
    Lever("mnist", "16/32/64, 6 epochs, batch 128, lr 0.1, no label smoothing",
          ("--epochs", "6", *W16, *B128, "--lr", "0.1", "--label-smoothing", "0"), seeds=1),
    Lever("mnist", "resnet20 (3 blocks a stage) 12/24/48, 3 epochs, batch 128, lr 0.1",
          ("--model", "resnet20", "--model-arg", "stem_stride=2", "--model-arg", "widths=[12,24,48]",
           "--epochs", "3", *B128, "--lr", "0.1"), seeds=1),
    Lever("mnist", "16/32/128, 3 epochs, batch 128, lr 0.1",
          ("--epochs", "3", "--model-arg", "widths=[16,32,128]", *B128, "--lr", "0.1"), seeds=1),
    Lever("mnist", "16/32/128, 3 epochs, batch 128, lr 0.2",
          ("--epochs", "3", "--model-arg", "widths=[16,32,128]", *B128, "--lr", "0.2"), seeds=1),
    Lever("mnist", "16/32/64, 6 epochs, batch 128, lr 0.2",
          ("--epochs", "6", *W16, *B128, "--lr", "0.2"), seeds=1),
    Lever("mnist", "16/32/64, 6 epochs, batch 128, lr 0.4",
          ("--epochs", "6", *W16, *B128, "--lr", "0.4"), seeds=1),
    Lever("mnist", "16/32/64, 6 epochs, batch 128, lr 0.2, no label smoothing",
          ("--epochs", "6", *W16, *B128, "--lr", "0.2", "--label-smoothing", "0"), seeds=1),
    Lever("mnist", RECIPE_ROW),
    # Fashion-MNIST, one-seed screens: half the earlier recipe's 57 TFLOP, spent on more epochs
    # of a narrower net, on lower resolutions first, or on more steps
    Lever("fashion-mnist", "32/64/128, 7 epochs, batch 256, lr 0.2 (the earlier recipe, cut to 7 epochs)",
          ("--epochs", "7", *FULL, *W32, "--batch-size", "256", "--lr", "0.2"), seeds=1),
    Lever("fashion-mnist", "32/64/128, 7 epochs, batch 128, lr 0.1",
          ("--epochs", "7", *FULL, *W32, *B128, "--lr", "0.1"), seeds=1),
    Lever("fashion-mnist", "32/64/128, 7 epochs, batch 128, lr 0.2",
          ("--epochs", "7", *FULL, *W32, *B128, "--lr", "0.2"), seeds=1),
    Lever("fashion-mnist", "32/64/128, 7 epochs, batch 64, lr 0.05",
          ("--epochs", "7", *FULL, *W32, "--batch-size", "64", "--lr", "0.05"), seeds=1),
    Lever("fashion-mnist", "24/48/96, 13 epochs, batch 128, lr 0.1",
          ("--epochs", "13", *FULL, *W24, *B128, "--lr", "0.1"), seeds=1),
    Lever("fashion-mnist", "16/32/64, 30 epochs, batch 128, lr 0.1",
          ("--epochs", "30", *FULL, *W16, *B128, "--lr", "0.1"), seeds=1),
    Lever("fashion-mnist", "32/64/128, 12 epochs 12->28 px (full from 75%), batch 128, lr 0.1",
          ("--epochs", "12", *W32, "--min-img-size", "12", "--progressive-until", "0.75", *B128,
           "--lr", "0.1"), seeds=1),
    Lever("fashion-mnist", "32/64/128, 10 epochs 12->28 px (full from 50%), batch 128, lr 0.1",
          ("--epochs", "10", *W32, "--min-img-size", "12", "--progressive-until", "0.5", *B128,
           "--lr", "0.1"), seeds=1),
    Lever("fashion-mnist", "24/48/96, 20 epochs 12->28 px (full from 75%), batch 128, lr 0.1",
          ("--epochs", "20", *W24, "--min-img-size", "12", "--progressive-until", "0.75", *B128,
           "--lr", "0.1"), seeds=1),
    Lever("fashion-mnist", "24/48/96, 13 epochs, batch 128, lr 0.2",
          ("--epochs", "13", *FULL, *W24, *B128, "--lr", "0.2"), seeds=1),
    Lever("fashion-mnist", "24/48/96, 20 epochs 12->28 px (full from 75%), batch 128, lr 0.2",
          ("--epochs", "20", *W24, "--min-img-size", "12", "--progressive-until", "0.75", *B128,
           "--lr", "0.2"), seeds=1),
    Lever("fashion-mnist", "16/32/64, 30 epochs, batch 128, lr 0.2",
          ("--epochs", "30", *FULL, *W16, *B128, "--lr", "0.2"), seeds=1),
    Lever("fashion-mnist", "16/32/64, 30 epochs, batch 128, lr 0.1, cutout (--augment strong)",
          ("--epochs", "30", *FULL, *W16, *B128, "--lr", "0.1", "--augment", "strong"), seeds=1),
    Lever("fashion-mnist", "24/48/96, 20 epochs 12->28 px (full from 75%), batch 128, lr 0.2, EMA 0.999",
          ("--epochs", "20", *W24, "--min-img-size", "12", "--progressive-until", "0.75", *B128,
           "--lr", "0.2", "--ema", "0.999"), seeds=1),
    # larger batches at the linearly scaled lr: the same compute in fewer steps (faster per image
    # on the Xeon without AMX of BENCHMARKS.md, most of all in the small early epochs)
    Lever("fashion-mnist", "24/48/96, 20 epochs 12->28 px (full from 75%), batch 256, lr 0.4",
          ("--epochs", "20", *W24, "--min-img-size", "12", "--progressive-until", "0.75",
           "--batch-size", "256", "--lr", "0.4"), seeds=1),
    # the recipe as shipped: 24/48/96, 20 epochs 12->28 px, batch 512, lr 0.8 (until 2026-12-03
    # batch 128 at lr 0.2: the row "24/48/96, 20 epochs 12->28 px (full from 75%), batch 128, lr 0.2")
    Lever("fashion-mnist", RECIPE_ROW),
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

    from resnetkit.evaluation import evaluate

    path = run_dir / "raw.safetensors"
    if not path.is_file():
        state = torch.load(run_dir / "state.pt", weights_only=True)
        with safe_open(str(run_dir / "last.safetensors"), framework="pt") as f:
            meta = f.metadata()
        save_file({k: v.contiguous() for k, v in state["model"].items()}, str(path), metadata=meta)
    return float(evaluate(path)["top1"])


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def resolved_config(argv: Sequence[str]) -> dict:
    """The configuration ``resnetkit <argv>`` would train (its --dry-run), as config.json holds it."""
    out = subprocess.run([sys.executable, "-m", "resnetkit", *argv, "--dry-run", "--json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"resnetkit {shlex.join(argv)} --dry-run exited {out.returncode}:\n{out.stderr}")
    return json.loads(out.stdout)["config"]


def same_run(run_dir: Path, argv: Sequence[str]) -> bool:
    """Whether ``run_dir`` holds a finished run of the configuration ``argv`` asks for."""
    if not ((run_dir / "report.json").is_file() and (run_dir / "config.json").is_file()):
        return False
    have = json.loads((run_dir / "config.json").read_text())
    want = resolved_config(argv)
    skip = NOT_COMPARED | ({"eval_every"} if have.get("val_size") == want.get("val_size") == 0 else set())
    return comparable(have, skip) == comparable(want, skip)


def comparable(config: dict, skip: set[str] | frozenset[str]) -> dict:
    """The fields of ``config`` that decide what a run computes; progressive resizing from the
    full input size (``--min-img-size 28`` on 28 px data) is no progressive resizing."""
    from resnetkit.data.presets import get_preset

    out = {k: v for k, v in config.items() if k not in skip}
    full = out.get("img_size") or get_preset(out["dataset"]).img_size
    if out.get("min_img_size") == full:
        out["min_img_size"] = None
    return out


def final_test_accuracy(run_dir: Path) -> float:
    """report.json's top-1, the run's one test pass; a run with --tta from before TTA averaged
    shifted views (its report.json has no tta_views) is evaluated again from the same checkpoint,
    so every row's TTA is today's."""
    report = json.loads((run_dir / "report.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    if config.get("tta") and "tta_views" not in report:
        from resnetkit.evaluation import evaluate

        return float(evaluate(run_dir / report.get("checkpoint", "best.safetensors"))["top1"])
    return float(report["top1"])


def train_once(lever: Lever, seed: int, runs: Path) -> tuple[float, float, float | None, str]:
    """(TFLOP, final-epoch test accuracy, that of the raw weights with --ema, precision) of one
    seed, trained now or read from ``runs``."""
    out = run_folder(runs, lever, seed)
    if not same_run(out, lever.argv(seed)):
        if out.exists():
            raise RuntimeError(f"{out} holds another or an unfinished run; remove it")
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = lever.argv(seed, str(out))
        log = out.parent / f"seed{seed}.log"
        with log.open("w") as f:
            rc = subprocess.run([sys.executable, "-m", "resnetkit", *argv], stdout=f,
                                stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"resnetkit {shlex.join(argv)} exited {rc}:\n{tail}")
    # the one test pass of the final epoch (nothing was selected)
    config = json.loads((out / "config.json").read_text())
    how = f"{config['precision']}{' + channels_last' if config.get('channels_last') else ''}"
    raw = raw_accuracy(out) if "--ema" in lever.args else None
    return run_tflop(out), final_test_accuracy(out), raw, how


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def row(lever: Lever, results: Sequence[tuple[int, float, float, float | None, str]]) -> str:
    acc_target, tflop_target = TARGETS[lever.dataset]
    tflop = statistics.median(r[1] for r in results)
    accs = [r[2] for r in results]
    raws = [r[3] for r in results if r[3] is not None]
    raw = (f"{100 * statistics.median(raws):.2f} ({', '.join(f'{100 * r:.2f}' for r in raws)})"
           if raws else "-")
    med = statistics.median(accs)
    met = "yes" if med >= acc_target and tflop <= tflop_target else "no"
    if len(results) < 3:
        met += " (1 seed: a screen)"
    each = ", ".join(f"{100 * a:.2f}" for a in accs)
    how = ", ".join(sorted({r[4] for r in results}))
    seeds = " ".join(str(r[0]) for r in results)
    cmd = f"for S in {seeds}; do resnetkit {shlex.join(lever.argv('$S'))}; done".replace("'$S'", "$S")
    return (f"| {lever.dataset} | {lever.name} | {tflop:.2f} | {each} | {100 * med:.2f} | {raw} | {met} "
            f"| {how} | `{cmd}` |")


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
            tflop, acc, raw, how = train_once(lever, seed, runs)
            print(f"  compute: {lever.dataset} | {lever.name} | seed {seed}: {tflop:.2f} TFLOP, "
                  f"{100 * acc:.2f}% ({how})", file=sys.stderr, flush=True)
            results.append((seed, tflop, acc, raw, how))
        rows.append(row(lever, results))
    targets = "; ".join(f"{d}: >= {100 * a:.1f}% within {t:g} TFLOP" for d, (a, t) in TARGETS.items())
    return "\n".join([
        "### Training compute to accuracy: the fast recipe's levers", "",
        provenance(cmd) + (f" CPU flags: {cpu_flags()}." if cpu_flags() else ""), "",
        f"Targets (median of 3 seeds): {targets}. Every row trains on all 60,000 training images "
        "with no validation split (`--val-size 0`): nothing is selected, and the accuracy is the "
        "final epoch's, from the run's one pass over the test split (Fashion-MNIST with the "
        "recipe's TTA: the image and its flip, each also shifted 1 px up-left and down-right; runs "
        "trained before TTA had the shifted views are evaluated again from their checkpoint). Each row's command spells out what it sets on top of the fast recipe "
        "(resnet8 with a stride-2 stem, SGD Nesterov, one-cycle, wd 5e-4, label smoothing 0.1); "
        f"rows named \"{RECIPE_ROW}\" run the recipe as shipped. One-seed rows are screens "
        "(compare levers, not targets). TFLOP: training compute, 3 x forward FLOPs "
        "(torch.utils.flop_counter) x images trained, summed over the epochs at each epoch's input "
        "size; it does not depend on the machine. Precision: what the speed probe chose for the "
        "row on this machine (numerics differ little; the TFLOP count is the same). Without EMA: "
        "the same runs' final raw weights (kept in state.pt), evaluated the same way.", "",
        "| dataset | row | TFLOP | test accuracy per seed (%) | median (%) | without EMA: median "
        "(per seed) | target met | precision | command |",
        "|---|---|---:|---|---:|---|---|---|---|", *rows])


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
    tflop, acc, raw, how = train_once(lever, args.seed, args.runs)
    without = f", raw weights {100 * raw:.2f}%" if raw is not None else ""
    print(f"{lever.dataset} | {lever.name} | seed {args.seed}: {tflop:.2f} TFLOP, {100 * acc:.2f}%{without} ({how})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
