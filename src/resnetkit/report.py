"""Metrics, confusion matrices, evidence and the figures of a run.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch, no display needed) and written atomically.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ._io import write_atomic
from ._version import __version__

ANNOTATE_MAX = 20  # classes up to which the confusion image prints every count
TICKS_MAX = 40  # classes up to which its axes name every class
LOG_LOSS_SPAN = 100.0  # losses spanning more than two decades are drawn on a log axis


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> np.ndarray:
    """Counts: rows are true classes, columns predicted classes."""
    t = targets.detach().to("cpu", torch.int64).numpy()
    p = preds.detach().to("cpu", torch.int64).numpy()
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(top5: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Top-1, top-5 (with more than 5 classes), per-class precision/recall/F1 and the matrix.

    ``top5``: (N, k) predicted indices, best first. A class never predicted has precision 0,
    one absent from the targets recall 0 (scikit-learn's zero_division=0).
    """
    n, k = len(classes), top5.shape[1]
    top5 = top5.detach().cpu()
    targets = targets.detach().cpu()
    cm = confusion_matrix(top5[:, 0], targets, n)
    total = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    out: dict[str, Any] = {"num_samples": total, "top1": float(tp.sum() / total) if total else float("nan")}
    if n > 5 and k >= 5:
        hits = (top5[:, :5] == targets[:, None]).any(1).sum().item()
        out["top5"] = hits / total if total else float("nan")
    out["macro_precision"] = float(precision.mean())
    out["macro_recall"] = float(recall.mean())
    out["macro_f1"] = float(f1.mean())
    out["per_class"] = [{"class": c, "precision": float(precision[i]), "recall": float(recall[i]),
                         "f1": float(f1[i]), "support": int(support[i])} for i, c in enumerate(classes)]
    out["confusion_matrix"] = cm.tolist()
    return out


def format_report(report: Mapping[str, Any], title: str = "") -> str:
    """A short human-readable table: accuracies and the per-class rows."""
    head = f"top-1 {100 * report['top1']:.2f}%"
    if "top5" in report:
        head += f"  top-5 {100 * report['top5']:.2f}%"
    head += f"  ({report['num_samples']} images{', ' + title if title else ''})"
    rows = report["per_class"]
    width = max([5] + [len(r["class"]) for r in rows])
    lines = [head, f"{'class':<{width}}  precision  recall     f1  support"]
    for r in rows:
        lines.append(f"{r['class']:<{width}}  {r['precision']:9.3f}  {r['recall']:6.3f}  "
                     f"{r['f1']:5.3f}  {r['support']:7d}")
    return "\n".join(lines)


# ------------------------------------------------------------------ figures
def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save_png(fig: Any, path: str | os.PathLike[str]) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def tick_labels(classes: Sequence[str]) -> tuple[list[str], dict[str, Any], str]:
    """(labels, text keywords, axis note) for class names on a plot. Names with characters the
    default font lacks (CJK names with DejaVu Sans) would print one missing-glyph warning per
    character and draw boxes: an installed font that has them all is taken instead, else each
    class is drawn as its index, and the note says so."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    names = [str(c) for c in classes]
    needed = {ord(ch) for name in names for ch in name if not ch.isspace()}

    def covers(path: str) -> bool:
        try:
            return needed <= set(FT2Font(path).get_charmap())
        except (OSError, RuntimeError, ValueError):
            return False

    default = font_manager.findfont(font_manager.FontProperties())
    if covers(default):
        return names, {}, ""
    for entry in font_manager.fontManager.ttflist[:200]:  # installed fonts: a few dozen, as a rule
        # matplotlib's Last Resort font "covers" everything with placeholder boxes
        if (entry.fname.lower().endswith((".ttf", ".otf")) and "lastresort" not in entry.fname.lower()
                and covers(entry.fname)):
            return names, {"fontproperties": font_manager.FontProperties(fname=entry.fname)}, ""
    return [str(i) for i in range(len(names))], {}, " (class index)"


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str | os.PathLike[str],
                   title: str = "confusion matrix") -> None:
    """Rows true, columns predicted; colour is the row-normalised rate, text the count."""
    n = len(classes)
    labels, font, note = tick_labels(classes) if n <= TICKS_MAX else ([], {}, "")
    side = min(14.0, max(4.5, 0.45 * n + 2))
    fig, (ax,) = _figure(side, side * 0.9)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    ax.set(title=title, xlabel=f"predicted{note}", ylabel=f"true{note}")
    if n <= TICKS_MAX:
        ax.set_xticks(range(n), labels, rotation=90 if n > 10 else 0, **font)
        ax.set_yticks(range(n), labels, **font)
    if n <= ANNOTATE_MAX:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    _save_png(fig, path)


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Loss and accuracy per epoch, train and val (epochs without evaluation are skipped)."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = _figure(10, 4, ncols=2)
    last = max((h["epoch"] for h in history), default=1)
    accuracies: list[float] = []
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [(h["epoch"], h[f"{split}_{key}"]) for h in history
                      if h.get(f"{split}_{key}") is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, markersize=3, label=split)
                accuracies += ys if key == "acc" else []
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.set_xlim(0.5, last + 0.5)  # whole epochs, a short run not squeezed into a sliver
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend()
    if accuracies:  # room below the lowest point and up to 100%, none on the frame
        ax_acc.set_ylim(max(0.0, min(accuracies) - 0.05), 1.01)
    if loss_span(history) > LOG_LOSS_SPAN:  # one spike of 1e10 would flatten every other point
        ax_loss.set_yscale("log")
        ax_loss.set_ylabel("loss (log scale)")
        ax_loss.grid(alpha=0.3, which="both")
    _save_png(fig, path)


def loss_span(history: Sequence[Mapping[str, Any]]) -> float:
    """Largest over smallest positive train or val loss of ``history`` (1 when there is none)."""
    losses = [h[k] for h in history for k in ("train_loss", "val_loss")
              if isinstance(h.get(k), (int, float)) and np.isfinite(h[k]) and h[k] > 0]
    return max(losses) / min(losses) if losses else 1.0


def plot_grad_norms(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                    title: str = "gradient norm per stage") -> bool:
    """Each stage's mean gradient L2 norm per epoch (``--log-grad-norms``), log y-axis.
    Returns False, writing nothing, when the history holds no grad norms."""
    from matplotlib.ticker import MaxNLocator

    rows = [(h["epoch"], h["grad_norms"]) for h in history if h.get("grad_norms")]
    if not rows:
        return False
    fig, (ax,) = _figure(6, 4)
    for stage in rows[0][1]:
        points = [(e, g[stage]) for e, g in rows if g.get(stage, 0) > 0]  # log scale: skip zeros
        if points:
            ax.plot(*zip(*points), "-o", markersize=3, label=stage)
    ax.set(xlabel="epoch", ylabel="mean gradient L2 norm", title=title, yscale="log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _save_png(fig, path)
    return True


# ------------------------------------------------------------------ evidence
def git_commit() -> str | None:
    """The commit of the source tree resnetkit runs from, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return platform.processor() or platform.machine()
    return device.type


def evidence(*, device: torch.device, seed: int, precision: str,
             wall_time_s: float | None = None) -> dict[str, Any]:
    """What a reader needs to trust or reproduce a number: versions, hardware, seed, time."""
    out = {"resnetkit_version": __version__, "git_commit": git_commit(),
           "torch_version": torch.__version__, "python_version": platform.python_version(),
           "platform": platform.platform(), "device": str(device), "device_name": device_name(device),
           "cpu_threads": torch.get_num_threads(), "precision": precision, "seed": seed}
    if wall_time_s is not None:
        out["wall_time_s"] = round(wall_time_s, 3)
    return out
