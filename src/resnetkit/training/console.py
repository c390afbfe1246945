"""What a run prints: its header, one line per epoch, the progress bar and the last line."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import probe
from ..config import RunConfig
from .recipes import describe


def header(t: Any) -> list[str]:
    """The lines that open a run, from a set-up Trainer ``t``: where it runs, its config, its
    splits, the speed setting and why, and the notes of its setup."""
    where = (f"{t.world_size} processes on {torch.device(t.device).type}"
             if t.world_size > 1 else str(t.device))
    lines = [f"run {t.run_dir}  ({where}, {t.precision.name}"
             f"{', resumed after epoch %d' % t.start_epoch if t.start_epoch else ''})",
             describe(t.cfg), split_line(t.loaders)]
    if t.choice is not None:
        lines.append(f"speed: {t.choice.describe(forced=forced_by(t.cfg, t.run_dir))}")
        if t.device.type == "cpu":
            lines.append(probe.wait_line(t.choice.wait_policy))
    return lines + list(t.notes) + list(t.transfer_notes)


def forced_by(cfg: RunConfig, run_dir: Path) -> str:
    """Where forced precision and memory format came from: a resumed run reads them from its
    config.json (as resolved when it started) unless a flag changed them."""
    if not cfg.resume:
        return "forced by flags"
    try:
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    kept = [k for k in ("precision", "channels_last") if saved.get(k) == getattr(cfg, k)]
    if len(kept) == 2:
        return "from the resumed run's config"
    if not kept:
        return "forced by flags"
    other = "channels_last" if kept[0] == "precision" else "precision"
    return f"{kept[0]} from the resumed run's config, {other} forced by a flag"


def progress_bar(verbose: bool, epoch: int, epochs: int, total: int) -> Any:
    """A tqdm bar on a terminal; nothing in logs and CI (the epoch line says it all)."""
    if not (verbose and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                dynamic_ncols=True)


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
