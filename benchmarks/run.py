"""The benchmarks behind `make bench`; each section is rewritten in BENCHMARKS.md between its markers.

Sections (``--only`` takes a comma-separated subset; all but ``compute`` and ``peers`` by default):

- ``tta``: time to accuracy of ``resnetkit train --recipe fast`` on Fashion-MNIST and MNIST, each
  run a subprocess timed from start to exit, over ``--seeds`` seeds (median, min-max).
- ``throughput``: training images/s of the fast recipe's network under resnetkit's fast path
  (in-memory loader, its precision and memory format, no host read per step) against a plain
  PyTorch tutorial loop (torchvision dataset + DataLoader + PIL transforms, fp32,
  ``loss.item()`` per step), same model, optimizer and batch size, each measurement in a new
  process.
- ``bench``: the ``resnetkit bench`` table of the fast recipe's network (train and infer).
- ``inference``: benchmarks/bench_inference.py.
- ``compute``: benchmarks/compute.py: training compute (TFLOP) against final-epoch test accuracy,
  one row per lever of the fast recipe (``--runs DIR`` keeps and reuses the run folders).
- ``peers``: benchmarks/peers.py: resnetkit against fastai, timm and Keras at equal wall time
  (hours: it installs the peers into a scratch venv; ``--quick`` is its ``--dry-run``).
- ``own-data``: benchmarks/own_data.py: the default recipe from scratch on a folder of real
  photos, per model: test accuracy of the val-chosen checkpoint, loss checks, TFLOP, wall time.
- ``busy``: the fast path (``resnetkit train``, its probe included) and the tutorial loop, each
  quiet, beside a second 2-thread training and beside a niced one, which the section starts and
  ends itself; new processes, alternated, 5 repeats (``--repeats``); within 20 minutes. Run it
  alone: ``python benchmarks/run.py --only busy``. Not in the default set.
- ``budget-load``: ``--time-budget 90s`` runs of the MNIST fast recipe quiet, beside a second
  training, and beside one that starts at 40% of the budget: wall time over budget (2 repeats,
  about 10 minutes). Run it alone too: ``python benchmarks/run.py --only budget-load``.

The datasets come from $RESNETKIT_DATA (never downloaded); the sections that need them are
reported as errors without it. ``--quick`` runs every section on tiny settings to check that it
works: its numbers are no result, and it writes a file only when ``--write`` is given.

    python benchmarks/run.py                         # everything into BENCHMARKS.md
    python benchmarks/run.py --only tta --seeds 5
    python benchmarks/run.py --quick --only bench    # print only
    python benchmarks/run.py --quick --write /tmp/bench-smoke.md
    python benchmarks/run.py --only compute --runs runs/compute
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _md and bench_inference, whether run as a script or imported

import torch  # noqa: E402

from _md import matmul_peaks, provenance, write_section  # noqa: E402

SECTIONS = ("tta", "throughput", "bench", "inference", "compute", "peers", "own-data", "busy",
            "budget-load")
# compute, peers and own-data train for hours; busy and budget-load must run alone
DEFAULT_SECTIONS = SECTIONS[:4]
DEFAULT_MD = HERE.parent / "BENCHMARKS.md"
# Targets for the whole `resnetkit train` process: (dataset, test accuracy, seconds).
TARGETS = {"fashion-mnist": (0.930, 180.0), "mnist": (0.995, 90.0)}
RATIO_TARGET = 2.0  # fast path vs the tutorial loop, images/s
QUICK_NOTE = "**--quick smoke run: tiny settings, these numbers are not a result.**"
# The fast recipe's Fashion-MNIST run that the inference section times at its own size: this
# invocation's time-to-accuracy seed 0, or one the inference section trains; removed at exit.
_KEPT: dict[str, Path] = {}


def kept_run() -> Path:
    if "run" not in _KEPT:
        folder = Path(tempfile.mkdtemp(prefix="resnetkit-bench-"))
        atexit.register(shutil.rmtree, folder, True)
        _KEPT["run"] = folder / "fashion-mnist-seed0"
    return _KEPT["run"]


# ------------------------------------------------------------------ shared
def this_command(argv: Sequence[str]) -> str:
    """The command line as recorded in BENCHMARKS.md: where the results are written is not part
    of the measurement (and may be a path of this machine), so --write is left out."""
    kept, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--write":
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("-")
            continue
        if not a.startswith("--write="):
            kept.append(a)
    return "python benchmarks/run.py" + "".join(f" {shlex.quote(a)}" for a in kept)


def data_root() -> Path | None:
    """$RESNETKIT_DATA when it holds the IDX files the time-to-accuracy and throughput runs read."""
    root = os.environ.get("RESNETKIT_DATA")
    if root and all((Path(root) / name / "raw").is_dir() for name in ("FashionMNIST", "MNIST")):
        return Path(root)
    return None


def resnetkit_exe() -> list[str]:
    """``resnetkit`` as this interpreter runs it, whatever is on PATH."""
    return [sys.executable, "-m", "resnetkit"]


def spread(values: Sequence[float], fmt: str, unit: str = "") -> str:
    """Median (min-max)."""
    med, lo, hi = (format(v, fmt) for v in (statistics.median(values), min(values), max(values)))
    return f"{med}{unit} ({lo}-{hi}{unit})"


# ------------------------------------------------------------------ a. time to accuracy
def train_args(dataset: str, seed: int | str, out: str, quick: bool) -> list[str]:
    args = ["train", "--dataset", dataset, "--recipe", "fast", "--seed", str(seed), "--out", out]
    return args + (["--epochs", "1", "--subset", "512"] if quick else [])


def final_accuracy(run_dir: Path) -> float:
    """report.json's top-1: the test accuracy of best.safetensors (the checkpoint the validation
    split chose), from the run's one pass over the test split at its end (with the recipe's
    test-time augmentation), as `resnetkit train` prints it."""
    return float(json.loads((run_dir / "report.json").read_text())["top1"])


def timed_train(dataset: str, seed: int, out: Path, quick: bool) -> tuple[float, float]:
    """(wall seconds from process start to exit, final test accuracy) of one training run into
    ``out`` (its log beside it)."""
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        start = time.perf_counter()
        rc = subprocess.run(resnetkit_exe() + train_args(dataset, seed, str(out), quick),
                            stdout=f, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - start
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"resnetkit train --dataset {dataset} --seed {seed} exited {rc}:\n{tail}")
    (out / "wall_s.txt").write_text(f"{wall:.1f}\n")
    return wall, final_accuracy(out)


def tta_folder(runs: Path, dataset: str, seed: int) -> Path:
    """Where the tta section keeps a run: the compute section's folder of the shipped recipe's row,
    so that ``--only tta,compute --runs DIR`` trains each seed once."""
    import compute

    return compute.run_folder(runs, compute.Lever(dataset, compute.RECIPE_ROW), seed)


def tta_row(dataset: str, runs: list[tuple[int, float, float]], quick: bool) -> str:
    acc_target, s_target = TARGETS[dataset]
    walls, accs = [w for _, w, _ in runs], [a for _, _, a in runs]
    met = sum(a >= acc_target and w <= s_target for _, w, a in runs)
    median_met = statistics.median(accs) >= acc_target and statistics.median(walls) <= s_target
    seeds = " ".join(str(s) for s, _, _ in runs)
    args = " ".join(train_args(dataset, "$S", f"<tmp>/{dataset}-seed$S", quick))
    cmd = f"for S in {seeds}; do resnetkit {args}; done"
    each = "; ".join(f"{s}: {w:.1f} s, {100 * a:.2f}%" for s, w, a in runs)
    return (f"| {dataset} | >= {100 * acc_target:.1f}% within {s_target:.0f} s | "
            f"{spread(walls, '.1f')} | {spread([100 * a for a in accs], '.2f', '%')} | "
            f"{'yes' if median_met else 'no'} | {met}/{len(runs)} | {each} | `{cmd}` |")


def section_tta(seeds: int, quick: bool, cmd: str, keep: Path | None = None) -> str:
    rows: list[str] = []
    not_last: list[str] = []  # runs whose best checkpoint is not their last epoch
    selected: set[str] = set()  # report.json selected_on of every run
    with tempfile.TemporaryDirectory(prefix="resnetkit-tta-") as tmp:
        for dataset in TARGETS:
            runs = []
            for seed in range(seeds):
                out = (tta_folder(keep, dataset, seed) if keep and not quick
                       else Path(tmp) / f"{dataset}-seed{seed}")
                if out.exists():
                    raise RuntimeError(f"{out} exists: the tta section times new runs; remove it")
                wall, acc = timed_train(dataset, seed, out, quick)
                acc_target, s_target = TARGETS[dataset]
                met = "met" if acc >= acc_target and wall <= s_target else "missed"
                print(f"  tta: {dataset} seed {seed}: {wall:.1f} s, {100 * acc:.2f}% ({met})",
                      file=sys.stderr, flush=True)
                runs.append((seed, wall, acc))
                report = json.loads((out / "report.json").read_text())
                selected.add(str(report.get("selected_on")))
                if not quick:
                    best = report.get("best_epoch")
                    last = json.loads((out / "config.json").read_text()).get("epochs")
                    if best != last:
                        not_last.append(f"{dataset} seed {seed}: epoch {best} of {last}")
                if dataset == "fashion-mnist" and seed == 0 and not quick:
                    shutil.copytree(out, kept_run(), dirs_exist_ok=True)
            rows.append(tta_row(dataset, runs, quick))
    return "\n".join([
        "### Time to accuracy: `resnetkit train --recipe fast`", "", provenance(cmd),
        *([QUICK_NOTE] if quick else []),
        "Each run is a new process, with RESNETKIT_DATA pointing at the IDX files, timed from start "
        "to exit (imports, reading the data from disk, "
        "training, final evaluation and report). Accuracy: `top1` of the run's report.json, the "
        "test accuracy `resnetkit train` reports at the end, from its one pass over the test split "
        f"(Fashion-MNIST with TTA: the image and its flip, each also shifted 1 px). {selection_text(selected, not_last)} "
        "Median over seeds, (min-max). Met: "
        "the median accuracy and the median wall time both meet the target.", "",
        "| dataset | target | wall s | test accuracy | met | runs meeting target | per seed "
        "| command |",
        "|---|---|---:|---:|---|---:|---|---|", *rows])


def selection_text(selected: set[str], not_last: list[str]) -> str:
    """Which split chose the checkpoint whose accuracy the table reports (report.json selected_on)."""
    if selected == {"none"}:
        return ("Nothing was selected: the fast recipe holds out no validation split (`--val-size 0`, "
                "report.json `selected_on: none`), trains on all 60,000 training images and reports "
                "its last epoch, where one-cycle ends annealed; the test split chose nothing.")
    later = "; ".join(not_last) if not_last else "none, every run ended on its best epoch"
    return (f"Checkpoint chosen on: {', '.join(sorted(selected))} (report.json `selected_on`): "
            "best.safetensors is the evaluated epoch with the best accuracy on the validation split "
            "held out of the training images; the test split chose nothing. Best checkpoint not "
            f"the last epoch: {later}.")


# ------------------------------------------------------------------ b. throughput ratio
def fast_config(data_dir: Path, device: torch.device) -> Any:
    """The fast recipe's Fashion-MNIST config, resolved now (it follows the recipe)."""
    from resnetkit.config import RunConfig
    from resnetkit.training.recipes import resolve_config  # fills the fields from recipe_values()

    return resolve_config(RunConfig(dataset="fashion-mnist", recipe="fast", data_dir=str(data_dir),
                                    device=str(device)))


def endless(loader: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        epoch += 1
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader


def timed_steps(batches: Iterator[Any], step: Callable[[Any], int], steps: int, warmup: int,
                device: torch.device) -> float:
    """Images/s over ``steps`` steps after ``warmup`` untimed ones; fetching batches is timed."""
    from resnetkit.runtime import sync

    for _ in range(warmup):
        step(next(batches))
    sync(device)
    images, start = 0, time.perf_counter()
    for _ in range(steps):
        images += step(next(batches))
    sync(device)
    return images / (time.perf_counter() - start)


def build_net(cfg: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, Any]:
    """The recipe's model (same initial weights every time) and its optimizer, without schedule."""
    from resnetkit.models import create_model
    from resnetkit.training.optim import build_optimizer, param_groups

    from resnetkit.data import dataset_spec

    spec = dataset_spec(cfg)
    torch.manual_seed(0)
    model = create_model(cfg.model, num_classes=spec.num_classes, in_chans=spec.in_chans,
                         **cfg.model_args).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer(param_groups(model, cfg.weight_decay), cfg)


def probe_choice(cfg: Any, device: torch.device, batch_size: int | None = None) -> Any:
    """What `resnetkit train` with this config runs: the speed probe's choice (or its cache's)."""
    from resnetkit.data import dataset_spec
    from resnetkit.probe import choose, network_key
    from resnetkit.steps import timing_step

    spec = dataset_spec(cfg)
    model, _ = build_net(cfg, device, channels_last=False)
    args = {"num_classes": spec.num_classes, "in_chans": spec.in_chans, **cfg.model_args}
    return choose(model, (spec.in_chans, spec.img_size, spec.img_size), batch_size or cfg.batch_size, device,
                  precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile,
                  network=network_key(cfg, args), make_step=timing_step)


def train_flops_per_image(cfg: Any, device: torch.device) -> int:
    """3 x forward FLOPs of the recipe's network on one image (resnetkit.flops)."""
    from resnetkit.data import dataset_spec
    from resnetkit.flops import TRAIN_MULTIPLIER, forward_flops

    spec = dataset_spec(cfg)
    model, _ = build_net(cfg, device, channels_last=False)
    return TRAIN_MULTIPLIER * forward_flops(model, (spec.in_chans, spec.img_size, spec.img_size))


def utilisation(images_per_s: float, flops_per_image: int, precision: str) -> str:
    """Training FLOP/s over the matmul peak at that precision."""
    peak = matmul_peaks()["bf16" if precision == "bf16" else "fp32"]
    achieved = images_per_s * flops_per_image / 1e9
    return f"{achieved:,.1f} GFLOP/s = {achieved / peak:.0%} of the {precision} matmul peak"


def fast_path(cfg: Any, device: torch.device, steps: int, warmup: int, choice: Any) -> float:
    from resnetkit.data import build_loaders
    from resnetkit.runtime import resolve_precision
    from resnetkit.steps import train_step

    loaders = build_loaders(cfg, device)
    model, optimizer = build_net(cfg, device, channels_last=choice.channels_last)
    precision = resolve_precision(choice.precision, device)
    autocast, scaler = precision.autocast(), precision.grad_scaler()
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def step(batch: Any) -> int:
        x, y = batch
        if choice.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(model, x, y, loss_fn=loss_fn, optimizer=optimizer, autocast=autocast, scaler=scaler)
        return y.shape[0]
    return timed_steps(endless(loaders.train), step, steps, warmup, device)


def tutorial_path(cfg: Any, device: torch.device, steps: int, warmup: int, workers: int) -> float:
    """The loop of the PyTorch beginner tutorials: PIL images through ToTensor + Normalize."""
    import torchvision
    from torchvision import transforms

    from resnetkit.data import dataset_spec

    spec = dataset_spec(cfg)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
    data = torchvision.datasets.FashionMNIST(cfg.data_dir, train=True, download=False, transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True, num_workers=workers)
    model, optimizer = build_net(cfg, device, channels_last=False)
    model.train()
    loss_fn, running = torch.nn.CrossEntropyLoss(), [0.0]

    def step(batch: Any) -> int:
        x, y = batch[0].to(device), batch[1].to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        running[0] += loss.item()  # the tutorial's running loss: one host sync per step
        return y.shape[0]
    return timed_steps(endless(loader), step, steps, warmup, device)


LOOPS = ("tutorial", "fast")


def loop_in_process(loop: str, data_dir: Path, device: torch.device, steps: int, warmup: int,
                    workers: int, choice: Any, timeout: float | None = None) -> float:
    """Images/s of one loop, measured in a new Python process (the tutorial loop as a user's own
    script, with the recipe's thread count; the fast path as `resnetkit train` runs it), so
    neither inherits the other's allocator state or warm caches."""
    args = [sys.executable, str(Path(__file__).resolve()), "--loop", loop, "--loop-data", str(data_dir),
            "--device", str(device), "--steps", str(steps), "--loop-warmup", str(warmup),
            "--workers", str(workers),
            "--loop-setting", f"{choice.precision},{int(choice.channels_last)},{getattr(choice, 'threads', 0) or 0}"]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=timeout).stdout
    return float(json.loads(out.strip().splitlines()[-1])["images_per_s"])


def run_loop(args: argparse.Namespace) -> int:
    """The child side of loop_in_process: one measurement, printed as one JSON line."""
    from types import SimpleNamespace

    from resnetkit.runtime import cpu_threads, resolve_device

    device = resolve_device(args.device)
    cfg = fast_config(args.loop_data, device)
    steps, warmup = args.steps or 60, args.loop_warmup
    if args.loop == "tutorial":
        if device.type == "cpu" and cfg.threads:
            torch.set_num_threads(cfg.threads)  # the recipe's count, set as a script would
        speed = tutorial_path(cfg, device, steps, warmup, args.workers)
    else:
        precision, cl, *threads = args.loop_setting.split(",")
        with cpu_threads(int(threads[0]) if threads and int(threads[0]) else cfg.threads, device):  # the probe's
            speed = fast_path(cfg, device, steps, warmup,
                              SimpleNamespace(precision=precision, channels_last=cl == "1"))
    print(json.dumps({"loop": args.loop, "images_per_s": speed}))
    return 0


def section_throughput(data_dir: Path, device: torch.device, steps: int, warmup: int, repeats: int,
                       workers: int, quick: bool, cmd: str) -> str:
    from resnetkit.runtime import cpu_threads

    cfg = fast_config(data_dir, device)
    speeds: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    with cpu_threads(cfg.threads, device):
        choice = probe_choice(cfg, device)
    print(f"  throughput: the probe chose {choice.describe()}", file=sys.stderr, flush=True)
    for r in range(repeats):  # alternated, so a slow spell of a shared machine hits both
        print(f"  throughput: repeat {r + 1}/{repeats} ...", file=sys.stderr, flush=True)
        for loop in LOOPS:
            speeds[loop].append(loop_in_process(loop, data_dir, device, steps, warmup, workers, choice))
    tut, fast = (statistics.median(speeds[k]) for k in LOOPS)
    per_image = train_flops_per_image(cfg, device)
    net = f"{cfg.model} {json.dumps(cfg.model_args, separators=(',', ':'))}"
    fast_how = (f"in-memory loader with the recipe's augmentation ({cfg.augment}), the setting "
                f"`--precision auto` chose here: {choice.describe()}; no host read per step")
    return "\n".join([
        "### Training throughput: resnetkit's fast path vs a plain PyTorch loop", "", provenance(cmd),
        *([QUICK_NOTE] if quick else []),
        f"Fashion-MNIST train split, the fast recipe's network {net}, batch {cfg.batch_size}, "
        f"SGD lr {cfg.lr:g} (momentum 0.9, Nesterov, wd {cfg.weight_decay:g}) in both, device {device}. "
        f"{steps} timed steps after {warmup} warm-up steps, fetching the batches included, building "
        f"the dataset and loader not; each measurement in a new process; median of {repeats} "
        f"alternated repeats (min-max). "
        f"Utilisation: training FLOP/s (3 x {per_image // 3 / 1e6:.1f} MFLOP forward per image, "
        f"torch.utils.flop_counter) over the matmul peak above at the loop's precision.", "",
        "| loop | what it does | images/s | utilisation | ratio |", "|---|---|---:|---|---:|",
        f"| tutorial | torchvision FashionMNIST + DataLoader(shuffle, num_workers={workers}) with PIL "
        f"ToTensor + Normalize, fp32, `loss.item()` every step | {spread(speeds['tutorial'], ',.0f')} "
        f"| {utilisation(tut, per_image, 'fp32')} | 1.00x |",
        f"| resnetkit fast path | {fast_how} | {spread(speeds['fast'], ',.0f')} | "
        f"{utilisation(fast, per_image, choice.precision)} | "
        f"**{fast / tut:.2f}x** (target >= {RATIO_TARGET:g}x) |"])


# ------------------------------------------------------------------ c. resnetkit bench
def bench_settings(cfg: Any, quick: bool, steps: int | None = None, compile: bool = True) -> dict[str, Any]:
    if quick:
        return {"batch_size": 16, "steps": 2, "warmup": 1, "compile": False}
    return {"batch_size": cfg.batch_size, "steps": steps or 30, "warmup": 3, "compile": compile}


def bench_args(cfg: Any, size: Sequence[int], how: dict[str, Any], device: torch.device) -> list[str]:
    """The `resnetkit bench` arguments that measure what section_bench measures."""
    args = ["bench", "--model", cfg.model]
    for key, value in cfg.model_args.items():
        args += ["--model-arg", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    args += ["--input-size", ",".join(map(str, size)), "--batch-size", str(how["batch_size"]),
             "--steps", str(how["steps"]), "--warmup", str(how["warmup"]), "--device", str(device)]
    return args + ([] if how["compile"] else ["--no-compile"])


def bench_table(rows: list[dict[str, Any]]) -> list[str]:
    from resnetkit.bench import fastest, fastest_line

    best = {id(fastest(rows, m)) for m in ("train", "infer")}
    out = ["| mode | precision | channels_last | compile | images/s | vs fp32 eager |",
           "|---|---|---|---|---:|---:|"]
    for r in rows:
        speed = f"{r['images_per_s']:,.0f}" if r["images_per_s"] else r["error"]
        speed = f"**{speed}**" if id(r) in best else speed
        ratio = f"{r['speedup']:.2f}x" if r.get("speedup") else ""
        out.append(f"| {r['mode']} | {r['precision']} | {'yes' if r['channels_last'] else 'no'} | "
                   f"{'yes' if r['compile'] else 'no'} | {speed} | {ratio} |")
    return out + [""] + [fastest_line(rows, m) + "." for m in dict.fromkeys(r["mode"] for r in rows)]


def section_bench(device: torch.device, quick: bool, cmd: str, steps: int | None = None,
                  compile: bool = True) -> str:
    from resnetkit.bench import MODES, bench_grid, setting_name
    from resnetkit.config import RunConfig
    from resnetkit.data import dataset_spec
    from resnetkit.training.recipes import resolve_config

    cfg = resolve_config(RunConfig(dataset="fashion-mnist", recipe="fast"))
    spec = dataset_spec(cfg)
    size, how = (spec.in_chans, spec.img_size, spec.img_size), bench_settings(cfg, quick, steps, compile)
    same = "resnetkit " + " ".join(shlex.quote(a) for a in bench_args(cfg, size, how, device))

    def progress(row: dict[str, Any]) -> None:
        speed = row["error"] or f"{row['images_per_s']:,.0f} images/s"
        print(f"  bench: {row['mode']} {setting_name(row)}: {speed}", file=sys.stderr, flush=True)

    rows = bench_grid(cfg.model, size, batch_size=how["batch_size"], modes=MODES, steps=how["steps"],
                      warmup=how["warmup"], device=device, compile=how["compile"],
                      model_args=cfg.model_args, progress=progress)
    choice = probe_choice(cfg, device, how["batch_size"])
    chosen = next((r for r in rows if r["mode"] == "train" and not r["compile"] and r["images_per_s"]
                   and (r["precision"], r["channels_last"]) == (choice.precision, choice.channels_last)),
                  None)
    util = ""
    if chosen:
        rate = utilisation(chosen["images_per_s"], train_flops_per_image(cfg, device), choice.precision)
        util = f"; in the table above that setting trains at {rate}"
    return "\n".join([
        "### `resnetkit bench`: the fast recipe's network", "", provenance(cmd),
        *([QUICK_NOTE] if quick else []),
        f"The same measurement as `{same}`. Random inputs at {'x'.join(map(str, size))}, batch "
        f"{how['batch_size']}, {how['steps']} timed steps after {how['warmup']} warm-up "
        f"step{'s' * (how['warmup'] != 1)} per setting; train = forward, backward and SGD update. "
        "**Bold**: the fastest setting of each mode.",
        "", *bench_table(rows), "",
        f"`--precision auto` (the speed probe `resnetkit train` runs) chose {choice.describe()}{util}."])


# ------------------------------------------------------------------ d. inference
def fast_checkpoint() -> Path:
    """The fast recipe's trained Fashion-MNIST run folder (trains one if the tta section did not)."""
    run = kept_run()
    if not (run / "best.safetensors").is_file():
        print("  inference: training the fast recipe's Fashion-MNIST model to time it",
              file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="resnetkit-inf-") as tmp:
            timed_train("fashion-mnist", 0, Path(tmp), False)
            shutil.copytree(Path(tmp) / "fashion-mnist-seed0", run, dirs_exist_ok=True)
    return run


def int8_accuracy(run_dir: Path) -> str:
    """fp32 and int8 ONNX test accuracy of a trained run on its whole test split."""
    from resnetkit.export import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="resnetkit-int8-") as tmp:
        r = export_checkpoint(run_dir, out=Path(tmp) / "model.onnx", int8=True, check=64).int8_report
    if r is None or r.fp32_acc is None or r.int8_acc is None:
        return "int8 accuracy: the test set was not at hand."
    return (f"Int8 on the whole Fashion-MNIST test set ({r.n_eval:,} images, the fast recipe's trained "
            f"net, `resnetkit export RUN --int8`, no TTA): fp32 ONNX {r.fp32_acc:.2%}, int8 {r.int8_acc:.2%} "
            f"({(r.int8_acc - r.fp32_acc) * 100:+.2f} points), top-1 agreement {r.agreement:.2%}; "
            f"calibrated on 256 training images.")


def section_inference(quick: bool, cmd: str) -> str:
    """ResNet-18 at 224 px (random weights) and the fast recipe's trained net at 28 px, on
    Fashion-MNIST test images; --quick: resnet8 at 8 px, no compile, no ONNX."""
    import bench_inference

    if quick:
        argv = ["--model", "resnet8", "--input-size", "8", "--skip", "compile", "--skip", "onnx"]
        return bench_inference.run(argv, command=cmd) + "\n\n" + QUICK_NOTE
    argv = ["--model", "resnet18", "--input-size", "224"]
    run_dir = fast_checkpoint() if data_root() is not None else None
    if run_dir is None:
        print("  inference: RESNETKIT_DATA unset: the fast recipe's trained model is skipped",
              file=sys.stderr, flush=True)
        return bench_inference.run(argv, command=cmd)
    text = bench_inference.run(argv + ["--checkpoint", str(run_dir)], command=cmd)
    note = ("`resnet8 (trained)`: the fast recipe's network, trained by `resnetkit train --dataset "
            "fashion-mnist --recipe fast --seed 0` (the first time-to-accuracy run, or trained for "
            "this section), timed on Fashion-MNIST test images (random inputs if the test set "
            "could not be read: the input column says which).")
    return "\n\n".join([text, note, int8_accuracy(run_dir)])


# ------------------------------------------------------------------ f. speed on a busy machine
BUSY_TARGETS = {"training": 0.4, "niced": 0.8}  # fast path: share of its quiet images/s kept
BUSY_CONDITIONS = ("quiet", "training", "niced")
BUSY_REPEATS = 5
BUSY_DEADLINE_S = 19 * 60  # no repeat starts that the slowest so far would carry past this: within 20 min
BUSY_RUN_TIMEOUT_S = 240  # one measurement at most (a 20x slowdown of the fast path takes ~60 s)
NEIGHBOUR_WARMUP_S = 6.0  # a neighbour's start (torch, its first steps) before a measurement begins
# The neighbours, as another user's own scripts (plain torch, OpenMP's own wait policy, 2
# threads, forever): a second training of a small CIFAR-style net, and a niced resnet50 (beside
# a niced resnet50 a 2-thread step lost 2-30x on a 2-core AMD EPYC, beside a niced resnet20 little).
NEIGHBOUR = """
import sys, torch
from resnetkit.models import create_model
torch.set_num_threads(2)
name, chans, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
net = create_model(name, num_classes=10, in_chans=chans)
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(batch, chans, size, size), torch.randint(0, 10, (batch,))
while True:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
"""
NEIGHBOURS = {"training": ([], ["resnet20", "1", "28", "128"]),
              "niced": (["nice", "-n", "19"], ["resnet50", "3", "32", "32"])}


def start_neighbour(condition: str, quick: bool) -> subprocess.Popen | None:
    """The process beside the measurement (None when quiet), in a session of its own."""
    if condition == "quiet":
        return None
    prefix, args = NEIGHBOURS[condition]
    if quick:  # toy size: the same processes, smaller steps
        args = [args[0], args[1], "16", "4"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"),
                                                       *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("OMP_WAIT_POLICY", None)  # the neighbour keeps OpenMP's default, as a user's script does
    proc = subprocess.Popen([*prefix, sys.executable, "-c", NEIGHBOUR, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(1.0 if quick else NEIGHBOUR_WARMUP_S)
    if proc.poll() is not None:
        raise RuntimeError(f"the {condition} neighbour exited with {proc.returncode}: "
                           f"{proc.stderr.read().decode(errors='replace').strip()[-300:]}")
    return proc


def end_neighbour(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


def busy_fast(data_dir: Path, cache: Path, quick: bool, timeout: float) -> dict[str, Any]:
    """One `resnetkit train --recipe fast` run on MNIST (a new process, the probe's cache of this
    section): its epoch's images/s, its whole time, and what its probe chose."""
    with tempfile.TemporaryDirectory(prefix="resnetkit-busy-") as tmp:
        subset, test = ("512", "64") if quick else ("4096", "200")
        args = [*resnetkit_exe(), "train", "--dataset", "mnist", "--recipe", "fast", "--data-dir", str(data_dir),
                "--subset", subset, "--epochs", "1", "--val-size", "0", "--test-subset", test, "--out", tmp + "/run"]
        env = {**os.environ, "RESNETKIT_CACHE": str(cache)}
        env.pop("OMP_WAIT_POLICY", None)  # resnetkit's own choice, as a user gets it
        start = time.perf_counter()
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"resnetkit train failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        line = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[0])
        runtime = json.loads((Path(tmp) / "run" / "report.json").read_text())["runtime"]
    return {"images_per_s": line["images_per_s"], "seconds": seconds, "threads": runtime.get("threads"),
            "chosen_by": runtime.get("chosen_by"), "wait_policy": runtime.get("omp_wait_policy"),
            "reprobed": "probing again" in out.stdout}


def busy_tutorial(data_dir: Path, quick: bool, timeout: float) -> dict[str, Any]:
    """The tutorial loop (a user's plain script: 2 threads, OpenMP's own policy) in a new process."""
    from types import SimpleNamespace

    steps, warmup = (3, 1) if quick else (30, 3)
    start = time.perf_counter()
    speed = loop_in_process("tutorial", data_dir, torch.device("cpu"), steps, warmup, 0,
                            SimpleNamespace(precision="fp32", channels_last=False), timeout=timeout)
    return {"images_per_s": speed, "seconds": time.perf_counter() - start}


BUSY_LOOPS: dict[str, Callable[..., dict[str, Any]]] = {}  # filled below: workload -> one measurement


def busy_measurements(data_dir: Path, quick: bool, repeats: int, cache: Path,
                      deadline: float | None = None) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every (workload, condition) measured ``repeats`` times, alternated: each repeat runs every
    condition, each condition both workloads beside one neighbour started and ended for it. No
    repeat starts that the slowest one so far would carry past ``deadline`` (time.monotonic())."""
    results: dict[tuple[str, str], list[dict[str, Any]]] = {(w, c): [] for w in BUSY_LOOPS for c in BUSY_CONDITIONS}
    deadline = deadline or time.monotonic() + BUSY_DEADLINE_S
    slowest = 0.0
    for r in range(repeats):
        if r and time.monotonic() + slowest > deadline:
            print(f"  busy: stopped after {r} repeats: another would end past the section's time",
                  file=sys.stderr)
            break
        began = time.monotonic()
        for condition in BUSY_CONDITIONS:
            neighbour = start_neighbour(condition, quick)
            try:
                for workload, measure in BUSY_LOOPS.items():
                    print(f"  busy: repeat {r + 1}/{repeats}, {workload} {condition} ...", file=sys.stderr, flush=True)
                    kw = {"cache": cache} if workload == "fast" else {}
                    results[(workload, condition)].append(
                        measure(data_dir, quick=quick, timeout=BUSY_RUN_TIMEOUT_S, **kw))
            finally:
                end_neighbour(neighbour)
        slowest = max(slowest, time.monotonic() - began)
    return results


def busy_wait_verdict(data_dir: Path, cache: Path) -> str:
    """The speed probe of the fast run and the wait-policy verdict of this machine, measured now
    (quiet) into the section's cache, as ``resnetkit bench --reprobe`` does; the verdict in words.
    The runs of the section then start from this cache entry, as a user's second run does."""
    from resnetkit.config import RunConfig
    from resnetkit.data import dataset_spec
    from resnetkit.training.recipes import resolve_config

    cfg = resolve_config(RunConfig(dataset="mnist", recipe="fast", data_dir=str(data_dir)))
    spec = dataset_spec(cfg)
    model_args = [a for k, v in cfg.model_args.items() for a in ("--model-arg", f"{k}={json.dumps(v)}")]
    args = ["--model", cfg.model, *model_args, "--input-size", f"{spec.in_chans},{spec.img_size},{spec.img_size}",
            "--batch-size", str(cfg.batch_size), "--device", "cpu"]
    env = {**os.environ, "RESNETKIT_CACHE": str(cache)}
    env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run([*resnetkit_exe(), "bench", "--reprobe", *args],
                         env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if "wait policy" in line.lower()]
    return lines[-1].strip() if out.returncode == 0 and lines else f"not measured: {out.stderr.strip()[-300:]}"


def machine_line() -> str:
    """The CPU model and its flags, as every benchmark figure names them."""
    from _md import cpu_flags_text

    from resnetkit.probe import cpu_model

    return f"{cpu_model()} ({cpu_flags_text()}), {os.cpu_count()} cores"


def section_busy(data_dir: Path, quick: bool, cmd: str, repeats: int | None = None) -> str:
    repeats, deadline = repeats or (1 if quick else BUSY_REPEATS), time.monotonic() + BUSY_DEADLINE_S
    print(f"  busy: on {machine_line()}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="resnetkit-busy-cache-") as tmp:
        cache = Path(tmp)
        verdict = busy_wait_verdict(data_dir, cache)
        results = busy_measurements(data_dir, quick, repeats, cache, deadline)
    return busy_markdown(results, verdict, quick, cmd)


def busy_markdown(results: dict[tuple[str, str], list[dict[str, Any]]], verdict: str, quick: bool,
                  cmd: str) -> str:
    rows = ["| workload | beside | images/s | x quiet | target | whole run s | threads, wait policy (by) |",
            "|---|---|---:|---:|---:|---:|---|"]
    for workload in BUSY_LOOPS:
        quiet = [m["images_per_s"] for m in results[(workload, "quiet")]]
        for condition in BUSY_CONDITIONS:
            ms = results[(workload, condition)]
            if not ms:
                continue
            speeds = [m["images_per_s"] for m in ms]
            ratio = statistics.median(speeds) / statistics.median(quiet) if quiet else float("nan")
            target = BUSY_TARGETS.get(condition) if workload == "fast" else None
            mark = "" if target is None else (f">= {target:g}x {'met' if ratio >= target else 'MISSED'}")
            how = ("; ".join(sorted({f"{m['threads']} thr, {m['wait_policy'] or 'OpenMP default'} ({m['chosen_by']}"
                                     f"{', re-probed' if m['reprobed'] else ''})" for m in ms}))
                   if workload == "fast" else "2 thr, OpenMP default (a plain script)")
            rows.append(f"| {workload} | {condition} | {spread(speeds, ',.0f')} | {ratio:.2f}x | {mark} | "
                        f"{spread([m['seconds'] for m in ms], '.1f')} | {how} |")
    n = max(len(v) for v in results.values())
    return "\n".join([
        "### Speed beside other work: quiet, beside a second training, beside a niced one", "", provenance(cmd),
        *([QUICK_NOTE] if quick else []),
        f"fast: `resnetkit train --dataset mnist --recipe fast --subset 4096 --epochs 1 --val-size 0 "
        f"--test-subset 200` (its probe and cache included; images/s of its epoch from metrics.jsonl, "
        f"whole run from start to exit); tutorial: the throughput section's tutorial loop on "
        f"Fashion-MNIST, 30 steps. Beside: quiet; `training`, a plain 2-thread torch loop of resnet20 "
        f"at 28 px, batch 128; `niced`, the same of resnet50 at 32 px, batch 32 under `nice -n 19`: "
        f"each started by this section before the measurement and ended after it. New processes, "
        f"conditions alternated, median (min-max) of {n} repeats. Targets: the fast path keeps >= 0.4x "
        f"of its quiet images/s beside a training (fair sharing: 0.5x) and >= 0.8x beside a niced one.",
        "", f"Wait policy, measured first on the quiet machine: {verdict}", "", *rows])


# ------------------------------------------------------------------ g. a time budget under load
BUDGET_LOAD_S = 90  # --time-budget of each run (the MNIST fast recipe's own target time)
BUDGET_LOAD_TARGETS = {"quiet": 1.05, "training": 1.10, "training from 40%": 1.10}  # wall / budget, at most


def budget_run(data_dir: Path, condition: str, budget_s: float, quick: bool) -> float:
    """Seconds from start to exit of `resnetkit train --dataset mnist --recipe fast --time-budget`,
    beside no neighbour, one started before it, or one started at 40% of its budget."""
    import threading

    late: list[subprocess.Popen | None] = []
    neighbour = start_neighbour("training", quick) if condition == "training" else None
    timer = threading.Timer(0.4 * budget_s, lambda: late.append(start_neighbour("training", quick)))
    with tempfile.TemporaryDirectory(prefix="resnetkit-budget-") as tmp:
        args = [*resnetkit_exe(), "train", "--dataset", "mnist", "--recipe", "fast", "--data-dir", str(data_dir),
                "--time-budget", f"{budget_s:g}s", "--out", tmp + "/run", *(["--subset", "2000"] if quick else [])]
        env = {**os.environ, "RESNETKIT_CACHE": tmp + "/cache"}  # a fresh probe, as on a new machine
        env.pop("OMP_WAIT_POLICY", None)
        try:
            if condition == "training from 40%":
                timer.start()
            start = time.perf_counter()
            out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3 * budget_s + 120)
            seconds = time.perf_counter() - start
        finally:
            timer.cancel()
            if timer.is_alive() or timer.ident is not None:
                timer.join()  # a neighbour it is starting now is ended below
            for proc in [neighbour, *late]:
                end_neighbour(proc)
    if out.returncode != 0:
        raise RuntimeError(f"resnetkit train failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return seconds


def section_budget_load(data_dir: Path, quick: bool, cmd: str, repeats: int | None = None) -> str:
    budget_s, repeats = (30 if quick else BUDGET_LOAD_S), repeats or (1 if quick else 2)
    print(f"  budget-load: on {machine_line()}", file=sys.stderr, flush=True)
    walls: dict[str, list[float]] = {c: [] for c in BUDGET_LOAD_TARGETS}
    for r in range(repeats):  # alternated, so a slow spell of a shared machine hits every condition
        for condition in BUDGET_LOAD_TARGETS:
            print(f"  budget-load: repeat {r + 1}/{repeats}, {condition} ...", file=sys.stderr, flush=True)
            walls[condition].append(budget_run(data_dir, condition, budget_s, quick))
    rows = ["| beside | wall s | wall / budget | target |", "|---|---:|---:|---:|"]
    for condition, target in BUDGET_LOAD_TARGETS.items():
        ratio = statistics.median(walls[condition]) / budget_s
        rows.append(f"| {condition} | {spread(walls[condition], '.1f')} | {ratio:.3f} | <= {target:.2f} "
                    f"{'met' if ratio <= target else 'MISSED'} |")
    return "\n".join([
        "### A time budget under load", "", provenance(cmd), *([QUICK_NOTE] if quick else []),
        f"`resnetkit train --dataset mnist --recipe fast --time-budget {budget_s:g}s`, a fresh probe cache "
        f"each run, timed from start to exit; beside nothing, beside the busy section's 2-thread "
        f"training neighbour started before it, and beside one started at 40% of the budget (this "
        f"section starts and ends them). Median (min-max) of {repeats} alternated repeats.", "", *rows])


BUSY_LOOPS.update(fast=busy_fast, tutorial=busy_tutorial)


# ------------------------------------------------------------------ main
def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma-separated sections to run: {','.join(SECTIONS)} (default: all but "
                        f"compute, which trains dozens of runs)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per dataset for tta (default 3; --quick 1)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per loop for throughput, after 5 warm-up steps (default 60), "
                        "and per setting for bench (default 30)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="bench: skip the torch.compile settings (each compiles for a while on a CPU)")
    p.add_argument("--repeats", type=int, default=None, help="alternated repeats for throughput (default 3)")
    p.add_argument("--workers", type=int, default=0, choices=(0, 2),
                   help="DataLoader workers of the tutorial loop (default 0, as the PyTorch quickstart)")
    p.add_argument("--device", default="auto", help="device for throughput and bench (default auto)")
    p.add_argument("--runs", type=Path, default=None, metavar="DIR",
                   help="tta and compute: keep the run folders here (compute reuses finished ones, the "
                        "shipped recipe's rows those of tta; default: a temporary folder)")
    p.add_argument("--levers", default=None, metavar="TEXT,...",
                   help="compute: only the rows whose name contains one of these (default: every row)")
    p.add_argument("--quick", action="store_true", help="tiny settings: check that every section works")
    p.add_argument("--loop", choices=("tutorial", "fast"), help=argparse.SUPPRESS)  # loop_in_process's child
    p.add_argument("--loop-data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--loop-warmup", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--loop-setting", default="fp32,0", help=argparse.SUPPRESS)
    p.add_argument("--write", type=Path, nargs="?", const=DEFAULT_MD, default=None, metavar="FILE",
                   help="markdown file to rewrite (default BENCHMARKS.md); a run without --quick "
                        "always writes, a --quick run only with --write")
    args = p.parse_args(argv)
    args.only = [s.strip().lower() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.seeds is not None and args.seeds < (1 if args.quick else 3):
        p.error("--seeds must be at least 3 (a median and a spread need them); 1 with --quick")
    if any(v is not None and v < 1 for v in (args.steps, args.repeats)):
        p.error("--steps and --repeats must be positive")
    if args.write is None and not args.quick and not args.loop:
        args.write = DEFAULT_MD
    return args


def sections(args: argparse.Namespace, cmd: str) -> dict[str, Callable[[], str]]:
    from resnetkit.runtime import resolve_device

    device = resolve_device(args.device)
    q = args.quick
    seeds = args.seeds or (1 if q else 3)
    steps, repeats = args.steps or (5 if q else 60), args.repeats or (1 if q else 3)
    root = data_root()
    return {
        "tta": lambda: section_tta(seeds, q, cmd, args.runs),
        "throughput": lambda: section_throughput(root or Path("."), device, steps, 2 if q else 5,
                                                 repeats, args.workers, q, cmd),
        "bench": lambda: section_bench(device, q, cmd, args.steps, args.compile),
        "inference": lambda: section_inference(q, cmd),
        "compute": lambda: run_compute(args.seeds, args.runs, args.levers, q, cmd),
        "peers": lambda: run_peers(args.seeds, args.runs, q, cmd),
        "own-data": lambda: run_own_data(args.seeds, args.runs, q, cmd),
        "busy": lambda: section_busy(root or Path("."), q, cmd, args.repeats),
        "budget-load": lambda: section_budget_load(root or Path("."), q, cmd, args.repeats),
    }


def run_peers(seeds: int | None, runs: Path | None, quick: bool, cmd: str) -> str:
    import peers

    argv = ["--dry-run"] * quick + ["--seeds", str(seeds)] * bool(seeds) + ["--runs", str(runs / "peers")] * bool(runs)
    return peers.build(peers.parse(argv), cmd)


def run_own_data(seeds: int | None, runs: Path | None, quick: bool, cmd: str) -> str:
    import own_data

    if quick:  # two epochs of the smallest target on the real photos: the code path, no result
        with tempfile.TemporaryDirectory(prefix="resnetkit-own-") as tmp:
            return own_data.section_own_data(["resnet18"], 1, Path(tmp), cmd, ["--epochs", "2"]) + "\n\n" + QUICK_NOTE
    if runs is not None:
        return own_data.section_own_data(list(own_data.TARGETS), seeds or 3, runs / "own-data", cmd)
    with tempfile.TemporaryDirectory(prefix="resnetkit-own-") as tmp:
        return own_data.section_own_data(list(own_data.TARGETS), seeds or 3, Path(tmp), cmd)


def run_compute(seeds: int | None, runs: Path | None, levers: str | None, quick: bool, cmd: str) -> str:
    import compute

    only = [part.strip() for part in levers.split(",") if part.strip()] if levers else None
    if quick:
        return "### Training compute to accuracy\n\n" + QUICK_NOTE + " (the section trains full runs; skipped)"
    if runs is not None:
        return compute.section_compute(seeds, runs, cmd, only)
    with tempfile.TemporaryDirectory(prefix="resnetkit-compute-") as tmp:
        return compute.section_compute(seeds, Path(tmp), cmd, only)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.loop:
        return run_loop(args)
    writers = sections(args, this_command(argv))
    status = 0
    for name in [s for s in SECTIONS if s in args.only]:  # the file's order, whatever --only's
        if name in ("tta", "throughput", "compute", "own-data", "busy", "budget-load") and data_root() is None:
            print(f"run.py: error: {name}: RESNETKIT_DATA is unset or holds no FashionMNIST/raw and "
                  f"MNIST/raw; point it at the datasets (nothing is downloaded)", file=sys.stderr)
            status = 1
            continue
        text = writers[name]()
        print(text, flush=True)
        if args.write:
            write_section(args.write, name, text)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
