"""``report.html``: one self-contained page per run, to look at what the model learned.

Everything is inlined (figures as base64 PNG, CSS in a ``<style>``), nothing is fetched, so the
file opens from disk in any browser, offline, and can be mailed as is. The layout is one column
that wraps on a phone (viewport meta, fluid images, tables that scroll sideways).

Sections: summary, settings and environment, curves, confusion matrix and most-confused pairs,
per-class precision/recall/F1, a top-losses gallery with Grad-CAM overlays, a reliability
diagram with its ECE (15 bins), and for a fine-tuning run which layers were frozen when.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import calibrate, explain, interpret
from . import report as reports
from ._io import write_json_atomic, write_text_atomic
from ._version import __version__
from .checkpoint import load_checkpoint, resolve_checkpoint_path
from .config import RunConfig, recorded_config
from .data import build_eval_loader, tta_for
from .errors import DataWarning, UserError
from .runtime import cpu_threads, resolve_device

TOP_LOSSES = 12  # gallery size: two rows on a laptop screen, scrollable on a phone
FILENAME = "report.html"
# (run config, model) -> [{"first", "last", "what", "frozen": [module names], "lr"}]: the
# fine-tuning schedule, passed in by the trainer (this module must not import it) and kept in
# report.json as ``freeze_timeline``.
FreezeTimeline = Callable[[RunConfig, nn.Module], list[dict[str, Any]]]


def write_class_files(run_dir: str | os.PathLike[str], classes: Sequence[str]) -> None:
    """classes.json (a list, index to name) and class_indices.json ({"0": name, ...}), the layout
    that Keras-style tutorials read."""
    run_dir = Path(run_dir)
    write_json_atomic(run_dir / "classes.json", list(classes))
    write_json_atomic(run_dir / "class_indices.json", {str(i): c for i, c in enumerate(classes)})


def write_run_report(run_dir: str | os.PathLike[str], *, device: str | torch.device = "auto",
                     freeze: FreezeTimeline | None = None, top_k: int = TOP_LOSSES,
                     method: str = "gradcam", layer: str | None = None,
                     interpretation: interpret.Interpretation | None = None) -> dict[str, Any]:
    """Write report.html (and class_indices.json; ``ece`` into report.json) from a per-sample
    pass of the run's best checkpoint over its test split: ``interpretation``, where the caller
    has made it already (the trainer's one test pass, at the run's precision, of an uncalibrated
    checkpoint), else a pass run now in fp32. ``layer``: the module whose map the gallery shows
    (default: the last one at least 7x7, :func:`resnetkit.explain.grad_cam`). Returns report.json's
    content."""
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise UserError(f"{run} is not a run folder (no config.json); pass the --out folder of a training run")
    dev = resolve_device(str(device))
    loaded = load_checkpoint(resolve_checkpoint_path(run), map_location=dev)
    cfg = recorded_config(loaded.config)
    with cpu_threads(cfg.threads, dev):  # the run's thread count, as evaluate uses
        return _write(run, loaded, cfg, dev, freeze, top_k, method, interpretation, layer)


def _write(run: Path, loaded: Any, cfg: RunConfig, dev: torch.device, freeze: FreezeTimeline | None,
           top_k: int, method: str, given: interpret.Interpretation | None = None,
           layer: str | None = None) -> dict[str, Any]:
    write_class_files(run, loaded.classes)
    rep = _read_json(run / "report.json") or {}
    temperature = calibrate.temperature_of(loaded.meta)
    if given is not None and temperature == 1.0 and len(given.top_index) >= min(top_k, len(given.targets)):
        interp, data_note = given, ""
    else:
        interp, data_note = _interpret(loaded, cfg, dev, temperature, top_k)
    if interp is not None and len(interp.targets):
        rep["ece"] = calibrate.expected_calibration_error(interp.probs, interp.targets)
        rep["ece_bins"] = calibrate.N_BINS
        if "confusion_matrix" not in rep:
            rep.update(reports.classification_report(interp.logits.topk(min(5, len(loaded.classes)), 1).indices,
                                                     interp.targets, loaded.classes))
    if freeze is not None:  # recorded, so that `resnetkit report` can show it without the trainer
        rep["freeze_timeline"] = freeze(cfg, loaded.model)
    timeline = rep.get("freeze_timeline") or []
    page = render(run=run, cfg=cfg, report=rep, history=_read_jsonl(run / "metrics.jsonl"),
                  classes=loaded.classes, interp=interp, gallery=_gallery(loaded, interp, method, layer),
                  temperature=temperature, calibration=loaded.meta.get("calibration"),
                  timeline=timeline, data_note=data_note, title=f"{loaded.arch} on {cfg.dataset}")
    if rep:
        write_json_atomic(run / "report.json", rep)
    write_text_atomic(run / FILENAME, page)
    return rep


def _interpret(loaded: Any, cfg: RunConfig, dev: torch.device, temperature: float,
               top_k: int) -> tuple[interpret.Interpretation | None, str]:
    """The per-sample pass over the test split, or None and why (its data is not on this machine)."""
    model = (interpret.TTAveraged(loaded.model, tta_for(cfg.dataset, loaded.spec)) if cfg.tta
             else loaded.model)  # as report.json's numbers
    with warnings.catch_warnings():  # skipped files and the like: the run has said so already
        warnings.simplefilter("ignore", DataWarning)
        try:
            loader = build_eval_loader(cfg, "test", dev, spec=loaded.spec)
        except UserError as e:
            return None, f"the test split could not be read, so per-image sections are missing: {e}"
        return interpret.collect(calibrate.with_temperature(model, temperature), loader, top_k), ""


def _gallery(loaded: Any, interp: interpret.Interpretation | None, method: str,
             layer: str | None = None) -> list[dict[str, Any]]:
    """The top-loss cards: picture (input | Grad-CAM of the predicted class), true, predicted,
    prob, and the map itself (``heatmap``, (H, W) in [0, 1])."""
    if interp is None or not len(interp.top_index):
        return []
    dev = next(loaded.model.parameters()).device
    cams = explain.grad_cam(loaded.model, interp.top_images.to(dev), method=method, layer=layer)
    probs, losses = interp.probs, interp.losses
    cards = []
    for row, index in enumerate(interp.top_index.tolist()):
        pred, true = int(cams.targets[row]), int(interp.targets[index])
        rgb = explain.to_rgb(interp.top_images[row], loaded.spec.mean, loaded.spec.std)
        cards.append({"index": index, "true": loaded.classes[true], "pred": loaded.classes[pred],
                      "prob": float(probs[index, pred]), "prob_true": float(probs[index, true]),
                      "loss": float(losses[index]), "heatmap": cams.heatmaps[row].numpy(), "layer": cams.layer,
                      "png": _pil_png(explain.side_by_side(rgb, cams.heatmaps[row].numpy()))})
    return cards


# ------------------------------------------------------------------ figures (PNG bytes)
def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _pil_png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def run_figure(run: Path, name: str, draw: Callable[[Path], Any]) -> bytes | None:
    """The run's own figure ``name`` (curves.png, confusion.png: the trainer has just drawn it),
    drawn with ``draw(path)`` first when it is missing."""
    path = run / name
    if not path.is_file():
        draw(path)
    return path.read_bytes() if path.is_file() else None


def reliability_png(probs: torch.Tensor, targets: torch.Tensor, title: str) -> bytes:
    """Guo et al.'s reliability diagram: accuracy per confidence bin against the diagonal, the gap
    shaded, and the share of samples per bin underneath."""
    bins = calibrate.reliability_bins(probs, targets)
    ece = calibrate.expected_calibration_error(probs, targets)
    fig = _figure(5, 5.4)[0]
    fig.clear()
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    width = 1 / len(bins)
    centers = [b.lower + width / 2 for b in bins]
    acc = [b.accuracy if b.count else 0 for b in bins]
    conf = [b.confidence if b.count else c for b, c in zip(bins, centers)]
    top.bar(centers, acc, width=width, edgecolor="black", color="#4a7ebb", label="accuracy")
    top.bar(centers, [c - a if b.count else 0 for b, a, c in zip(bins, acc, conf)], bottom=acc,
            width=width, edgecolor="#c0392b", color="none", hatch="//", label="gap to confidence")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title}: ECE {100 * ece:.2f}% (15 bins)")
    top.legend(loc="upper left", fontsize=8)
    n = max(1, sum(b.count for b in bins))
    bottom.bar(centers, [b.count / n for b in bins], width=width, color="gray", edgecolor="black")
    bottom.set(xlabel="confidence (top probability)", ylabel="share")
    return _fig_png(fig)


# ------------------------------------------------------------------ HTML
CSS = """
:root{--fg:#1d232a;--muted:#5b6670;--line:#dde3e8;--accent:#2f6db3;--bg:#fff;--soft:#f5f7f9}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:12px 16px 40px}
h1{font-size:1.6rem;margin:.4em 0 .2em}h2{font-size:1.25rem;margin:1.6em 0 .5em;border-bottom:2px solid var(--line)}
nav{display:flex;flex-wrap:wrap;gap:.3em .9em;font-size:.9rem}nav a{color:var(--accent)}
.muted{color:var(--muted);font-size:.9rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;margin:12px 0}
.card{background:var(--soft);border:1px solid var(--line);border-radius:8px;padding:8px 12px}
.card b{display:block;font-size:1.35rem}
img{max-width:100%;height:auto;display:block}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.9rem;margin:6px 0}
th,td{border-bottom:1px solid var(--line);padding:3px 10px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
td:first-child,th:first-child{overflow-wrap:normal;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.85rem;word-break:break-all}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
figure{margin:0;background:var(--soft);border:1px solid var(--line);border-radius:8px;padding:6px}
figcaption{font-size:.85rem;margin-top:4px}
.columns{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(320px,100%),1fr));gap:0 24px}
h3{font-size:1.05rem;margin:1em 0 .3em}
.bad{color:#b03a2e}.good{color:#1e7d45}
@media (max-width:600px){body{font-size:15px}main{padding:8px 10px 30px}h1{font-size:1.3rem}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return f'<p class="muted">{_e(alt)}: not available</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    cls = lambda i: ' class="n"' if i in numeric else ""  # noqa: E731
    th = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_e(v)}</td>" for i, v in enumerate(r)) + "</tr>"
                   for r in rows)
    return f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _loss(x: float) -> str:
    """Three significant digits: 0.0123, 1.23, 4.33e+06 (a diverged loss stays readable)."""
    return f"{x:.3g}"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}%"


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def render(*, run: Path, cfg: RunConfig, report: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
           classes: Sequence[str], interp: interpret.Interpretation | None, gallery: Sequence[Mapping[str, Any]],
           temperature: float, calibration: Mapping[str, Any] | None, timeline: Sequence[Mapping[str, Any]],
           data_note: str, title: str) -> str:
    """The whole page as a string."""
    split = report.get("split") or "test"  # "val": the run had no test split, and says so
    # pictures first, the reference tables last: a reader looks before reading
    sections = [
        ("summary", "Summary", _summary(report, temperature, data_note, split)),
        ("curves", "Training curves", _curves(run, history)),
        ("confusion", "Confusion matrix", _confusion(run, report, classes, title, split)),
        ("classes", "Per-class precision, recall, F1", _per_class(report)),
        ("top-losses", "Top losses", _gallery_html(gallery, split)),
        ("calibration", "Calibration", _calibration(interp, temperature, calibration, split)),
    ]
    if timeline:
        sections.append(("finetune", "Fine-tuning: what was frozen when", _timeline(timeline)))
    sections.append(("settings", "Settings and environment", _settings(cfg, report)))
    nav = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_e(name)}</h2>{content}</section>' for sid, name, content in sections)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}: resnetkit report</title><style>{CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><p class=\"muted\">run folder <code>{_e(run.name)}</code>; "
            f"written by resnetkit {_e(__version__)} on {stamp}</p><nav>{nav}</nav>{body}</main></body></html>\n")


def _curves(run: Path, history: Sequence[Mapping[str, Any]]) -> str:
    if not history:
        return '<p class="muted">no epochs in metrics.jsonl</p>'
    return _img(run_figure(run, "curves.png", lambda p: reports.plot_curves(history, p)),
                "loss and accuracy per epoch")


def _summary(rep: Mapping[str, Any], temperature: float, note: str, split: str = "test") -> str:
    items = [(f"{split} top-1", _pct(rep.get("top1")))]
    if "top5" in rep:
        items.append((f"{split} top-5", _pct(rep["top5"])))
    if split != "val" and isinstance(rep.get("val"), Mapping) and rep["val"].get("top1") is not None:
        items.append(("val top-1", _pct(rep["val"]["top1"])))
    items += [("ECE (15 bins)", _pct(rep.get("ece"))), ("macro F1", _pct(rep.get("macro_f1"))),
              (f"{split} images", rep.get("num_samples", "-")), ("best epoch", rep.get("best_epoch", "-"))]
    if rep.get("selected_on"):
        items.append(("checkpoint chosen on", rep["selected_on"]))
    if temperature != 1.0:
        items.append(("temperature", f"{temperature:.3f}"))
    wall = (rep.get("evidence") or {}).get("wall_time_s")
    if wall is not None:
        items.append(("wall time", f"{wall:.1f} s"))
    cards = "".join(f'<div class="card">{_e(k)}<b>{_e(v)}</b></div>' for k, v in items)
    # the CLI's warning, here too: a number chosen on the split it reports is biased upwards
    notes = [n for n in (rep.get("selection_note") if rep.get("selected_on") == "val" else None, note) if n]
    extra = "".join(f'<p class="bad">{_e(n)}</p>' for n in notes)
    return f'<div class="cards">{cards}</div>{extra}'


def _settings(cfg: RunConfig, rep: Mapping[str, Any]) -> str:
    conf = [(k, _value(v)) for k, v in cfg.to_dict().items() if v not in (None, "", [], {})]
    blocks = ["<div><h3>Run settings</h3>" + _table(("setting", "value"), conf) + "</div>"]
    for key, name in (("evidence", "Environment"), ("data", "Data")):
        if rep.get(key):
            rows = [(k, _value(v)) for k, v in rep[key].items()]
            blocks.append(f"<div><h3>{name}</h3>" + _table(("", "value"), rows) + "</div>")
    notes = rep.get("transfer") or []
    if notes:
        blocks.append("<div><h3>Notes</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>")
    return f'<div class="columns">{"".join(blocks)}</div>'


def _confusion(run: Path, rep: Mapping[str, Any], classes: Sequence[str], title: str, split: str = "test") -> str:
    cm = rep.get("confusion_matrix")
    if not cm:
        return '<p class="muted">no confusion matrix in report.json</p>'
    cm = np.asarray(cm)
    png = run_figure(run, "confusion.png", lambda p: reports.plot_confusion(cm, classes, p, title=f"{title} ({split})"))
    out = _img(png, "confusion matrix: rows true, columns predicted")
    pairs = interpret.most_confused(cm, classes)
    out += "<h3>Most confused pairs</h3>"
    if not pairs:
        return out + f"<p>No {_e(split)} image was misclassified.</p>"
    support = cm.sum(1)
    index = {c: i for i, c in enumerate(classes)}
    rows = [(t, p, n, _pct(n / max(1, support[index[t]]))) for t, p, n in pairs]
    return out + _table(("true", "predicted as", "images", "share of the true class"), rows, numeric=(2, 3))


def _per_class(rep: Mapping[str, Any]) -> str:
    rows = [(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"])
            for r in rep.get("per_class", [])]
    if not rows:
        return '<p class="muted">no per-class metrics in report.json</p>'
    rows.append(("macro average", f"{rep.get('macro_precision', 0):.3f}", f"{rep.get('macro_recall', 0):.3f}",
                 f"{rep.get('macro_f1', 0):.3f}", rep.get("num_samples", "")))
    return _table(("class", "precision", "recall", "F1", "support"), rows, numeric=(1, 2, 3, 4))


def _gallery_html(cards: Sequence[Mapping[str, Any]], split: str = "test") -> str:
    if not cards:
        return f'<p class="muted">no {_e(split)} images to show</p>'
    figs = []
    for c in cards:
        verdict = "good" if c["true"] == c["pred"] else "bad"
        alt = f"{split} image {c['index']} and its Grad-CAM"
        figs.append(f'<figure>{_img(c["png"], alt)}<figcaption>'
                    f'true <b>{_e(c["true"])}</b>, predicted <b class="{verdict}">{_e(c["pred"])}</b> '
                    f'(p={c["prob"]:.3f}); p(true)={c["prob_true"]:.3f}, loss {_loss(c["loss"])}; '
                    f'{_e(split)} image #{c["index"]}</figcaption></figure>')
    layer = f" <code>{_e(cards[0]['layer'])}</code>" if cards[0].get("layer") else ""
    intro = (f'<p class="muted">The {_e(split)} images with the highest loss, worst first. Left: the input; '
             f"right: Grad-CAM of the predicted class on the output of{layer} (by default the last "
             f"feature map at least {explain.MIN_MAP}x{explain.MIN_MAP}; red: what drove the prediction).</p>")
    return intro + f'<div class="gallery">{"".join(figs)}</div>'


def _calibration(interp: interpret.Interpretation | None, temperature: float,
                 calibration: Mapping[str, Any] | None, split: str = "test") -> str:
    if interp is None or not len(interp.targets):
        return f'<p class="muted">no {_e(split)} predictions to measure calibration on</p>'
    label = f"{split}, with temperature {temperature:.3f}" if temperature != 1.0 else split
    out = _img(reliability_png(interp.probs, interp.targets, label), "reliability diagram")
    out += ('<p class="muted">Expected calibration error (Guo et al. 2017): the mean gap between '
            "confidence and accuracy over 15 equal-width confidence bins, weighted by their share of "
            "images. 0 is perfectly calibrated.</p>")
    if calibration:
        rows = [(k, f"{v:.4f}" if isinstance(v, float) else _value(v)) for k, v in calibration.items()]
        out += "<h3>Temperature scaling</h3>" + _table(("", "value"), rows)
    else:
        out += '<p class="muted">Not calibrated: <code>resnetkit calibrate RUN</code> fits a temperature.</p>'
    return out


def _timeline(timeline: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for span in timeline:
        epochs = f"{span['first']}" if span["first"] == span["last"] else f"{span['first']}-{span['last']}"
        frozen = ", ".join(span["frozen"]) or "nothing"
        rows.append((epochs, span["what"], frozen, span.get("lr", "")))
    return ("<p class=\"muted\">As planned by --freeze / --freeze-epochs (a run that stopped early "
            "ends sooner). Frozen layers get no gradient and keep their BatchNorm statistics.</p>"
            + _table(("epochs", "freeze", "frozen modules", "learning rates"), rows))


# ------------------------------------------------------------------ reading the run folder
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}; the run folder is damaged") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]
