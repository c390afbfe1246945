"""The ``own-data`` section of benchmarks/run.py: the default recipe on a folder of real photos.

The journey most users come with: ``resnetkit train --dataset imagefolder --data-dir PHOTOS
--model M`` and nothing else. The photos are ``$RESNETKIT_DATA/sign-language-digits`` (2,062
real 100x100 JPEGs, 10 classes), split once into train/val/test (80/10/10 per class, seed 0,
symbolic links in a scratch folder), the same split for every run: val chooses the checkpoint,
test is read once at the end. Each (model, seed) is one ``resnetkit train`` subprocess timed
from start to exit. Checked per run, besides test accuracy: the train loss never rises above
twice its first epoch's value, and after the first epoch the val loss never exceeds 10x that
epoch's train loss (a young net's BatchNorm statistics gone wrong show up there).
Training compute is the ``--dry-run --json`` plan (3 x forward FLOPs x images), machine-free.

    python benchmarks/run.py --only own-data                      # every model, 3 seeds
    python benchmarks/own_data.py --models resnet18 --seeds 1 --runs runs/own   # one screen
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Test accuracy the default recipe must reach (median of 3 seeds), from scratch.
TARGETS = {"resnet18": 0.98, "resnet34": 0.98, "resnet50": 0.97, "densenet121": 0.97,
           "resnext50_32x4d": 0.97}
SPLIT = (0.8, 0.1, 0.1)
LOSS_RISE = 2.0  # no train loss above this multiple of the first epoch's
VAL_OVER_TRAIN = 10.0  # no val loss above this multiple of its epoch's train loss (after epoch 1)


def make_split(src: Path, dst: Path, seed: int = 0) -> Path:
    """Stratified train/val/test links of ``src`` (one sub-folder per class) in ``dst``; kept
    when it exists, so every run of every model reads the same split."""
    if (dst / "test").is_dir():
        return dst
    rng = random.Random(seed)
    tmp = dst.with_name(dst.name + ".tmp")
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file())
        rng.shuffle(files)
        n_val, n_test = round(len(files) * SPLIT[1]), round(len(files) * SPLIT[2])
        parts = {"val": files[:n_val], "test": files[n_val:n_val + n_test], "train": files[n_val + n_test:]}
        for part, members in parts.items():
            (tmp / part / cls.name).mkdir(parents=True, exist_ok=True)
            for f in members:
                os.symlink(f.resolve(), tmp / part / cls.name / f.name)
    os.replace(tmp, dst)
    return dst


def resnetkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnetkit", *args]


def train_tflop(data: Path, model: str, extra: Sequence[str]) -> float:
    out = subprocess.run(resnetkit("train", "--dataset", "imagefolder", "--data-dir", str(data),
                                   "--model", model, *extra, "--dry-run", "--json"),
                         check=True, capture_output=True, text=True).stdout
    plan = json.loads(out)
    return sum(3 * plan["model"]["forward_flops_per_image"] * e["images"]
               * _scale(e["input_shape"], plan) for e in plan["plan"]) / 1e12


def _scale(shape: Sequence[int], plan: dict) -> float:
    # forward_flops_per_image is at the run's full size; a smaller epoch costs its share of it
    full = plan["plan"][-1]["input_shape"][-1]
    return (shape[-1] / full) ** 2


def run_one(data: Path, model: str, seed: int, out: Path, extra: Sequence[str]) -> dict:
    """Train (or read a finished run in ``out``) and return its row."""
    if not (out / "report.json").exists():
        t0 = time.perf_counter()
        subprocess.run(resnetkit("train", "--dataset", "imagefolder", "--data-dir", str(data),
                                 "--model", model, "--seed", str(seed), "--out", str(out), *extra),
                       check=True, stdout=subprocess.DEVNULL)
        (out / "wall.json").write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    report = json.loads((out / "report.json").read_text())
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    train = [e["train_loss"] for e in epochs]
    worst_rise = max(train) / train[0]
    worst_val = max((e["val_loss"] / e["train_loss"] for e in epochs[1:] if e.get("val_loss") is not None),
                    default=0.0)
    wall = json.loads((out / "wall.json").read_text())["wall_s"] if (out / "wall.json").exists() else None
    return {"model": model, "seed": seed, "test": report["top1"], "split": report["split"],
            "best_epoch": report.get("best_epoch"), "epochs": len(epochs), "rise": worst_rise,
            "val_over_train": worst_val, "wall_s": wall, "img_size": report["data"]["img_size"]}


def section_own_data(models: Sequence[str], seeds: int, runs: Path, cmd: str,
                     extra: Sequence[str] = ()) -> str:
    from _md import provenance

    root = os.environ.get("RESNETKIT_DATA")
    src = Path(root or ".") / "sign-language-digits"
    if not src.is_dir():
        raise SystemExit(f"own_data.py: error: {src} not found; set RESNETKIT_DATA to the datasets' folder")
    data = make_split(src, runs / "split")
    lines = ["### Your own photos: the default recipe from scratch", "", provenance(cmd), "",
             "sign-language-digits, 2,062 real photos, a stratified 80/10/10 split (seed 0); test accuracy "
             "of the checkpoint val chose; a run passes the loss checks when its train loss never rose above "
             f"{LOSS_RISE:g}x its first epoch's and no val loss after epoch 1 exceeded {VAL_OVER_TRAIN:g}x "
             "its train loss.", "",
             "| model | target | test top-1, median (min-max) | met | seeds | loss checks | px | TFLOP | "
             "wall s, median |", "|---|---|---|---|---|---|---|---|---|"]
    for model in models:
        rows = [run_one(data, model, s, runs / model / f"seed{s}", extra) for s in range(seeds)]
        accs = [r["test"] for r in rows]
        med = statistics.median(accs)
        target = TARGETS.get(model)
        ok = all(r["rise"] <= LOSS_RISE and r["val_over_train"] <= VAL_OVER_TRAIN for r in rows)
        walls = [r["wall_s"] for r in rows if r["wall_s"] is not None]
        met = ("-" if target is None else "no" if med < target else "yes" if len(rows) >= 3 else "one seed")
        wall = f"{statistics.median(walls):.0f}" if walls else "-"
        lines.append(
            f"| {model} | {f'>= {target:.0%}' if target else '-'} | {med:.2%} ({min(accs):.2%}-{max(accs):.2%}) | "
            f"{met} | {len(rows)} | {'pass' if ok else 'FAIL'} (rise {max(r['rise'] for r in rows):.2f}x, "
            f"val/train {max(r['val_over_train'] for r in rows):.1f}x) | {rows[0]['img_size']} | "
            f"{train_tflop(data, model, extra):.1f} | {wall} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(TARGETS), help="comma-separated models")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--runs", type=Path, required=True, help="run folders (finished ones are read, not retrained)")
    p.add_argument("--write", type=Path, default=None, help="markdown file whose own-data section to rewrite")
    p.add_argument("extra", nargs="*", help="more `resnetkit train` flags after --, e.g. -- --epochs 2")
    args = p.parse_args(argv)
    text = section_own_data([m for m in args.models.split(",") if m], args.seeds, args.runs,
                            "python benchmarks/own_data.py " + " ".join(argv or sys.argv[1:]), args.extra)
    print(text)
    if args.write:
        from _md import write_section

        write_section(args.write, "own-data", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
