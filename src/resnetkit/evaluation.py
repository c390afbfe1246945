"""Evaluate a checkpoint on a split with the preprocessing and classes stored in it.

``evaluate(path)`` repeats the test evaluation of the run that wrote the checkpoint (same
loader, batch size, loss, precision, memory format and CPU threads), so on the same device it
reproduces the accuracy the run reported, to the last digit (with --compile, rare ties may differ).
``split="val"`` rebuilds the validation split from the run's config and seed (and reproduces the
val accuracy of the epoch that wrote the checkpoint); ``split="train"`` the images it trained on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibrate import temperature_of, with_temperature
from .checkpoint import load_checkpoint
from .config import RunConfig, recorded_config
from .data import build_eval_loader, tta_for
from .errors import UserError
from .report import classification_report, evidence, plot_confusion
from .runtime import cpu_threads, resolve_device, resolve_precision
from .steps import evaluate_batches


BIASED = ("no test split: the checkpoint was chosen on this split, so its accuracy is biased upwards; "
          "add a test/ folder")


def evaluate(path: str | os.PathLike[str], dataset: str | None = None, data_dir: str | None = None,
             split: str = "test", tta: bool | None = None, *, device: str = "auto",
             batch_size: int | None = None, precision: str | None = None,
             confusion_png: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Top-1, top-5 (more than 5 classes), loss, per-class precision/recall/F1 and the confusion
    matrix of checkpoint (or run folder) ``path`` on ``split`` (test, val or train) of its dataset
    or of ``dataset``.

    ``tta``: average the logits of each image's flipped and shifted views; None does what the run
    did (its --tta). ``precision``: None uses the run's. ``confusion_png``: also draw the matrix.
    """
    dev = resolve_device(device)
    loaded = load_checkpoint(path, map_location=dev)
    cfg = run_config(loaded.config, dataset=dataset, data_dir=data_dir, batch_size=batch_size)
    tta = cfg.tta if tta is None else tta
    views = tta_for(cfg.dataset, loaded.spec) if tta else None
    prec = resolve_precision(precision or cfg.precision, dev)
    loader = build_eval_loader(cfg, split, dev, spec=loaded.spec,
                               whole=another_folder(loaded.config.get("data_dir"), data_dir))
    if cfg.channels_last:  # the run's memory format: the same kernels, the same sums
        loaded.model.to(memory_format=torch.channels_last)
    temperature = temperature_of(loaded.meta)  # divides the logits: the loss changes, the ranking not
    with cpu_threads(cfg.threads, dev):
        out = evaluate_batches(with_temperature(loaded.model, temperature), loader, autocast=prec.autocast(),
                               channels_last=cfg.channels_last,
                               tta=views,
                               label_smoothing=cfg.label_smoothing or 0.0)
    if out.count == 0:
        raise UserError(f"the {split} split of {cfg.dataset} has no images to evaluate")
    rep = classification_report(out.top5, out.targets, loaded.classes)
    test_is_val = bool(getattr(loader, "test_is_val", False))  # no test split: its val split
    shown = "val, no test split" if test_is_val else split
    result = {"checkpoint": str(loaded.path), "model": loaded.arch, "dataset": cfg.dataset,
              "split": split, "test_is_val": test_is_val, "source": loader.source, "tta": tta,
              "tta_views": views.count if views else 1, "loss": out.summary()["loss"],
              "temperature": temperature, **rep,
              **({"selection_note": BIASED} if test_is_val else {}),
              "evidence": evidence(device=dev, seed=cfg.seed, precision=prec.name)}
    if confusion_png is not None:
        try:
            plot_confusion(np.asarray(rep["confusion_matrix"]), loaded.classes, confusion_png,
                           title=f"{loaded.arch} on {cfg.dataset} ({shown}{', tta' if tta else ''})")
            result["confusion_png"] = str(confusion_png)
        except UserError as e:  # a read-only folder costs the picture, never the metrics
            result["confusion_png_error"] = f"{e}; choose another place with --out"
    return result


def another_folder(trained_on: str | None, given: str | None) -> bool:
    """Whether ``given`` (--data-dir) names other data than the run trained on: a folder without
    split folders is then all test, not cut into the run's train/val."""
    if not given:
        return False
    return not trained_on or Path(given).expanduser().resolve() != Path(trained_on).expanduser().resolve()


def run_config(saved: dict[str, Any], **changes: Any) -> RunConfig:
    """The run's config (keys this version does not know are dropped), with the given changes."""
    cfg = recorded_config(saved)
    return cfg.replace(**{k: v for k, v in changes.items() if v is not None})


def default_confusion_path(checkpoint: Path, split: str, dataset: str | None = None) -> Path:
    """confusion-<split>.png beside the checkpoint; with a --dataset given,
    confusion-<dataset>-<split>.png, so the run's own picture is not replaced."""
    name = f"{dataset}-{split}" if dataset else split
    return checkpoint.parent / f"confusion-{name}.png"
