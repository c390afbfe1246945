"""The degradation experiment of He et al. 2015 (arXiv:1512.03385, section 4.2, Fig. 6).

Plain nets (no shortcuts) get *worse* at fitting their training set as they get deeper, although
a deeper net could copy the shallower one and set its extra layers to the identity; the same
nets with identity shortcuts do not. This trains plain-N and ResNet-N for each depth N (the
CIFAR-style ``plainN``/``resnetN`` of the registry: same widths, same recipe, same seed) through
:func:`resnetkit.training.train`, one run folder per net, and writes into the output folder:

- ``degradation.png``: train error (dashed) and validation error (solid) per epoch, plain nets
  left, residual nets right, one colour per depth, one y-axis (the layout of Fig. 6; the test
  split is read once per net, at the end, so it has no curve);
- ``grad_norms.png``: the first stage's gradient norm per epoch and every stage's at the end;
- ``table.md``: final train and val error, test error of the checkpoint chosen on val,
  parameters and seconds per net;
- ``report.json``: the settings, the per-net numbers, the verdict and the evidence.

Train error is measured during each epoch on augmented batches in training mode, as in the paper.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .. import report as reports
from .._io import write_json_atomic, write_text_atomic
from ..checkpoint import LAST, read_metadata
from ..config import RunConfig
from ..errors import UserError
from ..models import create_model, list_models
from ..report import _figure, _save_png
from ..runtime import resolve_device
from ..training import train


@dataclass(frozen=True)
class Settings:
    """One recipe for every net of the experiment (only the architecture differs)."""

    dataset: str = "fashion-mnist"
    depths: tuple[int, ...] = (20, 56)
    epochs: int = 8
    subset: int | None = 10_000  # training images (stratified); None or 0: the whole train split
    batch_size: int = 128
    lr: float = 0.1  # He et al. 2015, section 4.2
    schedule: str = "step"  # x0.1 at 50% and 75% of the run: 32k and 48k of 64k iterations
    warmup_epochs: float | None = None
    weight_decay: float = 1e-4  # section 4.2
    label_smoothing: float = 0.0  # the paper has none, and it would put a floor under train error
    augment: str = "basic"  # 4 px (CIFAR) / 2 px (28 px images) pad-and-crop plus flip
    precision: str = "auto"
    channels_last: bool | None = None  # None: auto (measured on a CPU)
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    note: str = field(default="", compare=False)  # what the preset leaves out of the paper's run


# The paper's CIFAR-10 run: 64k iterations of batch 128 = 164 epochs of 391 batches (50k images;
# the paper trains on 45k and keeps 5k for validation). Differences that remain: Nesterov
# momentum, no weight decay on BatchNorm and biases, reflect padding.
PAPER = Settings(dataset="cifar10", depths=(20, 32, 44, 56), epochs=164, subset=None,
                 channels_last=True, note="the paper's schedule: 64k iterations of batch 128 "
                 "(164 epochs of CIFAR-10), lr 0.1 divided by 10 at 32k and 48k, wd 1e-4")
PRESETS: dict[str, Settings] = {
    # 7.5 minutes on a 2-core CPU shared with other jobs (bf16 autocast on a CPU with AVX512-BF16),
    # seed 0: train error plain56 29.2% vs plain20 15.1%, resnet56 12.0% vs resnet20 12.9%.
    # Precision and memory format are left to the speed probe: bf16 is slow where it is emulated.
    "cpu": Settings(warmup_epochs=1,
                    note="scaled down for a CPU: Fashion-MNIST, 10,000 training images, 8 epochs "
                    "(the paper: CIFAR-10, 50,000 images, 164 epochs)"),
    "paper": PAPER,
}
GPU_COMMAND = "resnetkit experiment degradation --preset paper --out runs/degradation-paper"


def valid_depths() -> list[int]:
    """Depths with both a plain and a residual CIFAR net in the registry (6n+2)."""
    names = set(list_models())
    depths = (int(n[5:]) for n in names if n.startswith("plain") and n[5:].isdigit())
    # plain18/34 are the ImageNet nets of the same registry
    return sorted(d for d in depths if (d - 2) % 6 == 0 and f"resnet{d}" in names)


def parse_depths(text: str | Sequence[int]) -> tuple[int, ...]:
    """"20,56" -> (20, 56), checked against the registry; sorted, at least two."""
    valid = valid_depths()
    hint = f"valid depths are 6n+2: {', '.join(map(str, valid))}"
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    try:
        depths = sorted({int(d) for d in items})
    except (TypeError, ValueError):
        raise UserError(f"--depths {text!r}: give comma-separated integers, e.g. 20,56; {hint}") from None
    bad = [d for d in depths if d not in valid]
    if bad:
        raise UserError(f"--depths: no plain/residual CIFAR net of depth {', '.join(map(str, bad))}; {hint}")
    if len(depths) < 2:
        raise UserError(f"--depths needs two depths or more to compare (e.g. 20,56); {hint}")
    return tuple(depths)


def preset(name: str, **changes: Any) -> Settings:
    """A named preset with ``changes`` (None values ignored); depths are checked."""
    if name not in PRESETS:
        raise UserError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    given = {k: v for k, v in changes.items() if v is not None}
    if "depths" in given:
        given["depths"] = parse_depths(given["depths"])
    base = PRESETS[name]
    check_length(given)
    settings = replace(base, **given)
    if settings.warmup_epochs and settings.warmup_epochs >= settings.epochs:
        # the preset's warmup is for its own length; a shorter run warms up for half of itself
        settings = replace(settings, warmup_epochs=settings.epochs / 2)
    if settings != base:
        settings = replace(settings, note=f"preset {name} changed: " +
                           ", ".join(f"{k}={given[k]}" for k in sorted(given)))
    return settings


MIN_EPOCHS = 2  # one epoch gives one point per curve: nothing to compare a trend on


def check_length(given: Mapping[str, Any]) -> None:
    """Refuse runs too short (or too small) to say anything about depth."""
    epochs = given.get("epochs")
    if epochs is not None and epochs < MIN_EPOCHS:
        raise UserError(f"--epochs {epochs}: the comparison needs at least {MIN_EPOCHS} epochs (the cpu "
                        f"preset trains 8 to see plain56 fall behind plain20)")
    for key, least in (("subset", 0), ("batch_size", 2)):
        value = given.get(key)
        if value is not None and value < least:
            raise UserError(f"--{key.replace('_', '-')} must be at least {least}, got {value}")
    lr = given.get("lr")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr must be a finite number > 0, got {lr:g}")


def net_names(depths: Sequence[int]) -> list[str]:
    return [f"{kind}{d}" for kind in ("plain", "resnet") for d in depths]


def run_config(s: Settings, net: str, run_dir: Path) -> RunConfig:
    """The RunConfig of one net: every recipe value set, so all nets train alike."""
    return RunConfig(model=net, dataset=s.dataset, data_dir=s.data_dir, subset=s.subset or None,
                     epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, optimizer="sgd",
                     weight_decay=s.weight_decay, schedule=s.schedule, warmup_epochs=s.warmup_epochs,
                     label_smoothing=s.label_smoothing, augment=s.augment, precision=s.precision,
                     channels_last=s.channels_last, seed=s.seed, device=s.device, out=str(run_dir),
                     log_grad_norms=True)


# ------------------------------------------------------------------ running
@dataclass
class NetRun:
    name: str
    kind: str  # plain | resnet
    depth: int
    run_dir: Path
    history: list[dict[str, Any]]
    params: int
    seconds: float  # training wall time of the run, also when reused
    reused: bool = False  # finished before this invocation: its numbers were read, not retrained
    test_top1: float | None = None  # report.json: the one test pass, on the checkpoint val chose
    train_images: int | None = None  # images per epoch, behind train_error's sampling noise

    @property
    def train_error(self) -> float:
        return 1.0 - self.history[-1]["train_acc"]

    @property
    def val_error(self) -> float | None:
        acc = self.history[-1].get("val_acc")
        return None if acc is None else 1.0 - acc

    @property
    def test_error(self) -> float | None:
        return None if self.test_top1 is None else 1.0 - self.test_top1


def train_net(s: Settings, net: str, run_dir: Path, *, verbose: bool = True) -> NetRun:
    """Train one net, or reuse its finished run folder, or resume an interrupted one."""
    cfg = run_config(s, net, run_dir)
    if (run_dir / "config.json").is_file():
        check_same_config(cfg, run_dir)
    reused = (run_dir / "report.json").is_file()
    if reused:
        seconds = json.loads((run_dir / "report.json").read_text())["evidence"]["wall_time_s"]
        if verbose:
            print(f"{net}: reusing the finished run in {run_dir}", flush=True)
    else:
        resume = (run_dir / "state.pt").is_file()
        result = train(RunConfig(resume=str(run_dir), device=s.device, data_dir=s.data_dir) if resume
                       else cfg, verbose=verbose)
        seconds = result.wall_time_s
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    kind, depth = net.rstrip("0123456789"), int(net.lstrip("abcdefghijklmnopqrstuvwxyz"))
    report = json.loads((run_dir / "report.json").read_text())
    return NetRun(net, kind, depth, run_dir, history, count_params(run_dir), float(seconds), reused,
                  report.get("top1"), (report.get("data") or {}).get("train_size"))


def check_same_config(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to mix runs of other settings into one figure (values the recipe filled are not compared)."""
    saved = json.loads((run_dir / "config.json").read_text())
    differ = sorted(k for k, v in cfg.to_dict().items()
                    if v is not None and k not in ("out", "data_dir", "device") and saved.get(k) != v)
    if differ:
        raise UserError(f"{run_dir} holds a run with other settings ({', '.join(differ)}); "
                        f"choose another --out")


def count_params(run_dir: Path) -> int:
    """Parameters of the net as its checkpoint rebuilds it (classes and channels of the data)."""
    meta, _ = read_metadata(run_dir / LAST)
    with torch.device("meta"):  # shapes only
        model = create_model(meta["arch"], **meta["model_args"])
    return sum(p.numel() for p in model.parameters())


def run_degradation(settings: Settings, out: str | Path | None = None, *,
                    verbose: bool = True) -> dict[str, Any]:
    """Train every net of ``settings`` and write the figures, table and report into ``out``
    (default runs/degradation-<dataset>-<time>). Returns report.json as a dict."""
    settings = replace(settings, depths=parse_depths(settings.depths))
    out = Path(out) if out else Path("runs") / f"degradation-{settings.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    say(describe(settings), flush=True)
    t0 = time.perf_counter()
    runs = []
    for net in net_names(settings.depths):
        say(f"\n== {net} ==", flush=True)
        runs.append(train_net(settings, net, out / net, verbose=verbose))
    report = build_report(settings, runs, wall=time.perf_counter() - t0)
    plot_degradation(runs, out / "degradation.png", title=settings.dataset)
    plot_first_stage_grads(runs, out / "grad_norms.png")
    table = format_table(runs)
    lines = [report["verdict"]["message"], report["grad_norms"].get("message", "")]
    summary = "\n".join(line for line in lines if line)
    write_text_atomic(out / "table.md", f"{describe(settings)}\n\n{table}\n\n{summary}\n")
    write_json_atomic(out / "report.json", report)
    say(f"\n{table}\n\n{summary}\nfigures {out / 'degradation.png'}, {out / 'grad_norms.png'}; "
        f"report {out / 'report.json'}", flush=True)
    return report


def describe(s: Settings) -> str:
    data = f"{s.subset:,} training images" if s.subset else "all training images"
    warm = f", warmup {s.warmup_epochs:g} epoch(s)" if s.warmup_epochs else ""
    head = (f"degradation experiment: {s.dataset}, {data}, {s.epochs} epochs, batch {s.batch_size}, "
            f"SGD lr {s.lr:g} ({s.schedule} schedule{warm}), wd {s.weight_decay:g}, "
            f"label smoothing {s.label_smoothing:g}, seed {s.seed}; depths {', '.join(map(str, s.depths))}")
    return f"{head}\n({s.note})" if s.note else head


# ------------------------------------------------------------------ the verdict and the report
NOISE_SE = 2.0  # a deeper net "trains worse" when its error is higher by more than this many standard errors
UNTRAINED_ERROR = 0.5  # train error above which a net did not train (10 classes: chance is 90%)


def noise_margin(a: float, b: float, n: int | None) -> float:
    """The difference two train errors measured on ``n`` images each can show by chance alone:
    NOISE_SE binomial standard errors of the difference (0 when ``n`` is unknown)."""
    if not n:
        return 0.0
    return NOISE_SE * math.sqrt((a * (1 - a) + b * (1 - b)) / n)


def verdict(runs: Sequence[NetRun]) -> dict[str, Any]:
    """Does the deepest plain net end with a higher train error than the shallowest, by more than
    sampling noise (:func:`noise_margin`), while the deepest residual net does not?"""
    by = {(r.kind, r.depth): r for r in runs}
    lo, hi = min(r.depth for r in runs), max(r.depth for r in runs)
    err = {k: {d: by[(k, d)].train_error for d in (lo, hi)} for k in ("plain", "resnet")}
    n = min((r.train_images for r in runs if r.train_images), default=None)
    margin = {k: noise_margin(err[k][hi], err[k][lo], n) for k in err}
    plain_worse = err["plain"][hi] - err["plain"][lo] > margin["plain"]
    resnet_worse = err["resnet"][hi] - err["resnet"][lo] > margin["resnet"]
    reproduced = plain_worse and not resnet_worse
    p, r = err["plain"], err["resnet"]
    # a net left near chance says nothing about depth: the deep plain net may fail, the others must train
    untrained = {f"{k}{d}": e for k, d, e in (("plain", lo, p[lo]), ("resnet", lo, r[lo]), ("resnet", hi, r[hi]))
                 if e > UNTRAINED_ERROR}
    if untrained:
        errs = ", ".join(f"{name} {100 * e:.1f}%" for name, e in untrained.items())
        return {"reproduced": False, "inconclusive": True, "plain_deeper_trains_worse": plain_worse,
                "resnet_deeper_trains_worse": resnet_worse, "shallow_depth": lo, "deep_depth": hi,
                "train_error": {f"{k}{d}": e for k, v in err.items() for d, e in v.items()},
                "noise_margin": {k: round(v, 6) for k, v in margin.items()}, "train_images": n,
                "message": f"inconclusive: the nets did not train (error > {100 * UNTRAINED_ERROR:.0f}%: "
                           f"{errs} train error); train longer (--epochs) or on more images (--subset)"}
    nums = f"({100 * p[hi]:.2f}% vs {100 * p[lo]:.2f}% train error)"
    rnums = f"({100 * r[hi]:.2f}% vs {100 * r[lo]:.2f}%)"
    within = margin["resnet"] if reproduced else margin["plain"]
    noise = (f"; differences under {100 * within:.2f} points are within the sampling noise of "
             f"{n:,} images" if n else "")
    if reproduced and r[hi] > r[lo]:
        msg = (f"degradation reproduced: plain{hi} trains worse than plain{lo} {nums}, "
               f"resnet{hi} not beyond noise {rnums}{noise}")
    elif reproduced:
        msg = (f"degradation reproduced: plain{hi} trains worse than plain{lo} {nums}, "
               f"resnet{hi} does not {rnums}")
    elif plain_worse:
        msg = (f"degradation not reproduced at this size: plain{hi} trains worse than plain{lo} {nums}, "
               f"but so does resnet{hi} than resnet{lo} {rnums}")
    elif p[hi] > p[lo]:
        msg = (f"degradation not reproduced at this size: plain{hi} trains worse than plain{lo} "
               f"{nums} only within noise{noise}; resnet{hi} vs resnet{lo} {rnums}")
    else:
        msg = (f"degradation not reproduced at this size: plain{hi} trains no worse than plain{lo} "
               f"{nums}; resnet{hi} vs resnet{lo} {rnums}")
    return {"reproduced": reproduced, "inconclusive": False, "plain_deeper_trains_worse": plain_worse,
            "resnet_deeper_trains_worse": resnet_worse, "shallow_depth": lo, "deep_depth": hi,
            "train_error": {f"{k}{d}": e for k, v in err.items() for d, e in v.items()},
            "noise_margin": {k: round(v, 6) for k, v in margin.items()}, "train_images": n, "message": msg}


def build_report(s: Settings, runs: Sequence[NetRun], wall: float) -> dict[str, Any]:
    nets = {r.name: {"kind": r.kind, "depth": r.depth, "run_dir": r.run_dir.name, "params": r.params,
                     "seconds": round(r.seconds, 1), "reused": r.reused, "epochs": len(r.history),
                     "train_images": r.train_images,
                     "final_train_error": r.train_error, "final_val_error": r.val_error,
                     "test_error": r.test_error, "train_error": [1 - h["train_acc"] for h in r.history],
                     "val_error": [None if h.get("val_acc") is None else 1 - h["val_acc"] for h in r.history],
                     "first_stage_grad_norm": [first_stage_norm(h) for h in r.history]}
            for r in runs}
    settings = {k: v for k, v in asdict(s).items() if k != "note"}
    return {"experiment": "degradation", "paper": "He et al. 2015, arXiv:1512.03385, Fig. 6",
            "settings": settings, "note": s.note, "nets": nets, "verdict": verdict(runs),
            "grad_norms": grad_summary(runs),
            "figures": ["degradation.png", "grad_norms.png"], "table": "table.md",
            "full_size_command": GPU_COMMAND, "train_seconds": round(sum(r.seconds for r in runs), 1),
            "evidence": reports.evidence(device=resolve_device(s.device), seed=s.seed,
                                         precision=s.precision, wall_time_s=wall)}


def grad_summary(runs: Sequence[NetRun]) -> dict[str, Any]:
    """The first stage's gradient norm in the last epoch, alone and over the last stage's, for the
    deepest plain and residual nets: does it fade in the plain net? (The paper, section 4.1,
    reports healthy gradient norms with BatchNorm; this measures it.)"""
    deep = max(r.depth for r in runs)
    out: dict[str, Any] = {}
    for r in (r for r in runs if r.depth == deep):
        norms = r.history[-1].get("grad_norms") or {}
        if norms:
            first, last = next(iter(norms.values())), list(norms.values())[-1]
            out[r.name] = {"first_stage": first, "first_over_last_stage": first / last if last else None}
    names = [f"plain{deep}", f"resnet{deep}"]
    if all(n in out for n in names):
        p, r = (out[n] for n in names)
        out["message"] = (f"first-stage gradient norm in the last epoch: {names[0]} {p['first_stage']:.3g}, "
                          f"{names[1]} {r['first_stage']:.3g} (x{p['first_stage'] / r['first_stage']:.2f}); "
                          f"first over last stage: {p['first_over_last_stage']:.2f} vs "
                          f"{r['first_over_last_stage']:.2f}")
    return out


def first_stage_norm(record: Mapping[str, Any]) -> float | None:
    norms = record.get("grad_norms") or {}
    return next(iter(norms.values()), None)


def format_table(runs: Sequence[NetRun]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    lines = ["| net | train error | val error | test error (checkpoint chosen on val) | params | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | {pct(r.train_error)} | {pct(r.val_error)} | {pct(r.test_error)} | {r.params:,} "
              f"| {r.seconds:.0f} |" for r in runs]
    return "\n".join(lines)


# ------------------------------------------------------------------ figures
def _colours(runs: Sequence[NetRun]) -> dict[int, Any]:
    from matplotlib import colormaps

    depths = sorted({r.depth for r in runs})
    cmap = colormaps["tab10"]
    return {d: cmap(i % 10) for i, d in enumerate(depths)}


def plot_degradation(runs: Sequence[NetRun], path: Path, title: str = "") -> None:
    """Fig. 6 of the paper: train error dashed, val error solid; plain left, residual right."""
    fig, axes = _figure(10, 4, ncols=2)
    colour = _colours(runs)
    top = max(max(1 - h["train_acc"], 1 - (h.get("val_acc") or 0)) for r in runs for h in r.history)
    for ax, kind, name, word in ((axes[0], "plain", "plain", "plain"), (axes[1], "resnet", "ResNet", "residual")):
        for r in (r for r in runs if r.kind == kind):
            epochs = [h["epoch"] for h in r.history]
            ax.plot(epochs, [100 * (1 - h["train_acc"]) for h in r.history], "--", color=colour[r.depth])
            val = [(h["epoch"], 100 * (1 - h["val_acc"])) for h in r.history if h.get("val_acc") is not None]
            if val:
                ax.plot(*zip(*val), "-", linewidth=2, color=colour[r.depth], label=f"{name}-{r.depth}")
        ax.set(xlabel="epoch", ylabel="error (%)", ylim=(0, 100 * top * 1.05),
               title=f"{word} networks{f' on {title}' if title else ''}")
        ax.grid(alpha=0.3)
        ax.legend(title="dashed: train, solid: val", fontsize=8, title_fontsize=8)
    _save_png(fig, path)


def plot_first_stage_grads(runs: Sequence[NetRun], path: Path) -> None:
    """Left: the first stage's gradient norm per epoch; right: each stage's in the last epoch.
    Plain nets dashed, residual nets solid, one colour per depth, log y."""
    fig, (ax_epoch, ax_stage) = _figure(10, 4, ncols=2)
    colour = _colours(runs)
    for r in runs:
        style = dict(color=colour[r.depth], linestyle="--" if r.kind == "plain" else "-",
                     marker="s" if r.kind == "plain" else "o", markersize=3, label=r.name)
        points = [(h["epoch"], first_stage_norm(h)) for h in r.history if first_stage_norm(h)]
        if points:
            ax_epoch.plot(*zip(*points), **style)
        last = r.history[-1].get("grad_norms") or {}
        if last:
            ax_stage.plot(list(last), list(last.values()), **style)
    first = next((next(iter(h["grad_norms"])) for r in runs for h in r.history if h.get("grad_norms")), "")
    ax_epoch.set(xlabel="epoch", ylabel="mean gradient L2 norm", yscale="log",
                 title=f"first stage ({first}) per epoch")
    ax_stage.set(xlabel="stage", ylabel="mean gradient L2 norm", yscale="log", title="each stage, last epoch")
    for ax in (ax_epoch, ax_stage):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    _save_png(fig, path)
