"""report.json of a run: the one pass over the test split, on the checkpoint the val split chose.

The trainer hands over when its last epoch is done (:func:`write`); report.html then adds its
calibration (:mod:`resnetkit.report_html`) and the whole process's seconds close the file.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .. import checkpoint as ckpt
from .. import interpret, probe
from .. import report as reports
from .. import report_html
from .._io import write_json_atomic
from . import distributed, finetune
from .budget import process_age
from .console import final_line


def write(t: Any, wall: float) -> dict[str, Any]:
    """report.json, confusion.png and report.html of the Trainer ``t`` after its last epoch (rank 0
    writes; the other ranks help the test pass and return an empty report)."""
    report = final_report(t, wall)
    if t.is_main:  # report.html and the ECE, from best.safetensors as written
        report = report_html.write_run_report(t.run_dir, device=t.device, freeze=finetune.freeze_timeline,
                                              interpretation=t.test_interpretation)
        # the whole process's seconds so far: start-up, data, probe, training, test pass, report
        report["evidence"] = {**report.get("evidence", {}), "process_s": round(process_age(), 3)}
        write_json_atomic(t.run_dir / "report.json", report)
        t.log(final_line(report, wall, t.run_dir / "report.json"))
    return report


def plot_curves(t: Any) -> None:
    """curves.png (and grad_norms.png) of the epochs done so far, also after a failed run."""
    if t.is_main and t.history:
        reports.plot_curves(t.history, t.run_dir / "curves.png")
        if t.cfg.log_grad_norms:
            reports.plot_grad_norms(t.history, t.run_dir / "grad_norms.png")


def final_report(t: Any, wall: float) -> dict[str, Any]:
    """The one pass over the test split, on best.safetensors as written on disk: report.json and
    confusion.png. Under DDP rank 0 reads it and sends the weights to the others, which help
    evaluate and write nothing."""
    if t.is_main:
        _, tensors = ckpt.read_metadata(t.run_dir / ckpt.BEST)
        t.saved_model.load_state_dict(tensors)
    distributed.broadcast_module(t.saved_model)
    # one process: the pass also keeps each sample's logits for report.html (no second pass)
    collector = interpret.Collector(report_html.TOP_LOSSES) if t.world_size == 1 else None
    out = t.evaluate(t.loaders.test, on_batch=collector.add if collector else None)
    t.test_interpretation = collector.result() if collector else None
    if not t.is_main:
        return {}
    rep = reports.classification_report(out.top5, out.targets, t.spec.classes)
    rep = {"dataset": t.cfg.dataset, "split": "val" if t.loaders.test_is_val else "test",
           "model": t.cfg.model, "checkpoint": ckpt.BEST, "best_epoch": t.best.metrics.get("epoch"),
           **selection(t.best.metrics, t.loaders), **rep, "loss": out.summary()["loss"],
           "tta_views": t.tta.count if t.cfg.tta else 1,
           "transfer": t.transfer_notes, "runtime": runtime(t), "best_metrics": t.best.metrics, "data": t.loaders.info,
           "evidence": reports.evidence(device=t.device, seed=t.cfg.seed, wall_time_s=wall,
                                        precision=t.precision.name)}
    reports.plot_confusion(np.asarray(rep["confusion_matrix"]), t.spec.classes,
                           t.run_dir / "confusion.png",
                           title=f"{t.cfg.model} on {t.cfg.dataset} ({rep['split']}, "
                                 f"epoch {rep['best_epoch']})")
    write_json_atomic(t.run_dir / "report.json", rep)
    return rep


def runtime(t: Any) -> dict[str, Any]:
    """report.json's "runtime": what this run computed with, and how that was chosen."""
    c = t.choice
    speeds = [h["images_per_s"] for h in t.history if h.get("images_per_s")]
    return {"device": str(t.device), "precision": t.precision.name,
            "channels_last": t.channels_last, "compile": t.cfg.compile,
            "threads": ((c.threads if c and c.threads else torch.get_num_threads())
                        if t.device.type == "cpu" else None),
            "images_per_s": c.images_per_s if c and c.images_per_s else
            (float(np.median(speeds)) if speeds else None),
            "train_images_per_s": float(np.median(speeds)) if speeds else None,
            "chosen_by": c.chosen_by if c else "flag", "reason": c.reason if c else "",
            "threads_chosen_by": (c.threads_by or c.chosen_by) if c else "flag",
            **probe.wait_record(c.wait_policy if c else None),
            "probe_spread": c.spread if c else None, "probe_load": c.load if c else "",
            "probe_cached": c.cached if c else False,
            "probe": c.measured if c else [], "probe_seconds": c.probe_seconds if c else None}


def selection(best: Mapping[str, Any], loaders: Any) -> dict[str, Any]:
    """The report's account of how the checkpoint was chosen."""
    if loaders.val is None:
        return {"selected_on": "none", "val": None,
                "selection_note": "no validation split (--val-size 0): the last epoch is the result"}
    out: dict[str, Any] = {"selected_on": "val", "val": {"top1": best.get("val_acc"), "loss": best.get("val_loss")}}
    if loaders.test_is_val:
        out["selection_note"] = ("no test split: the checkpoint was chosen on the split it is reported "
                                 "on, so the accuracy is biased upwards; add a test/ folder")
    return out
