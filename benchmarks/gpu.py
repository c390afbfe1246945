"""Everything a GPU visit should check and measure, as one command that never hangs.

    python benchmarks/gpu.py --out results/gpu --data-dir DATA      # on a GPU, about 8 minutes
    python benchmarks/gpu.py --dry-run --out /tmp/gpu-dry            # every step at toy size, CPU: < 3 min

Steps, each with its own time cap, run as separate ``resnetkit`` processes (a hung step is
killed, not waited for) and are skipped, with the reason, once the budget is spent:

1. environment: device, driver, torch, CUDA and cuDNN versions;
2. ``resnetkit bench`` for resnet18 at 224 px and the CIFAR fast net (resnet9 at 32 px), train
   and infer, fp32/bf16/fp16 x channels_last x compile;
3. CIFAR-10 time to 94% with ``--recipe fast``, up to 3 seeds as time allows: wall time and test
   accuracy;
4. ResNet-20 and ResNet-56 with the paper's recipe (SGD 0.1, momentum 0.9, wd 1e-4, batch 128,
   step decay at 50% and 75%), as many epochs as fit, error next to the paper's 8.75% / 6.97%;
5. one GPU plain against ``--nproc 1`` (torchrun, NCCL): the same run, the same numbers;
6. export: ONNX parity against PyTorch (onnxruntime's CUDA provider when it is installed).

Results go to OUT/gpu.json after every step and OUT/gpu.md (a section for BENCHMARKS.md) at the
end, so a visit cut short still brings back what it measured. Interrupted or ended (SIGTERM, a
caller's ``timeout``), the script ends every step's process group before it exits: children run
in sessions of their own, so nothing else would.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
PAPER_ERROR = {"resnet20": 8.75, "resnet56": 6.97}  # He et al. 2015, Table 6, CIFAR-10 test error %
TARGET = 0.94  # airbench's and Page's CIFAR-10 target accuracy
SEEDS = (0, 1, 2)
# A dry run's steps are toy-sized, so its time goes to starting processes (importing torch):
# seconds on a laptop, much more on a busy machine. Its caps stretch; a GPU visit's do not.
DRY_RUN_SLACK = 4
DRY_RUN_BUDGET = 175  # seconds: a dry run ends within 3 minutes, skipping what no longer fits
DRY_TEST = ["--test-subset", "20"]  # a dry run's final reports: 20 test images, not 10,000 with TTA
_CHILDREN: set[subprocess.Popen] = set()  # the step processes running now (each its own group)


@dataclass
class Context:
    out: Path
    dry_run: bool
    data_dir: str | None
    deadline: float
    step_deadline: float = 0.0  # when the running step's cap ends
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step_left(self) -> float:
        return self.step_deadline - time.monotonic()

    def save(self) -> None:
        tmp = self.out / ".gpu.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2) + "\n")
        os.replace(tmp, self.out / "gpu.json")


@dataclass
class Run:
    rc: int | None  # None: killed at its time cap
    out: str
    err: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def why(self) -> str:
        if self.rc is None:
            return f"killed at its time cap after {self.seconds:.0f} s"
        tail = [line for line in self.err.strip().splitlines() if line.strip()][-1:]
        return f"exit {self.rc}: {tail[0][:300] if tail else 'no message'}"


def run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> Run:
    """One process (group) with a hard time cap: on timeout the whole group is killed."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=ROOT, start_new_session=True)
    _CHILDREN.add(proc)
    print(f"  started pid {proc.pid}: {' '.join(args[:6])}", file=sys.stderr, flush=True)
    try:
        out, err = proc.communicate(timeout=max(timeout, 1.0))
        return Run(proc.returncode, out, err, time.monotonic() - start)
    except subprocess.TimeoutExpired:
        end_group(proc)
        out, err = proc.communicate()
        return Run(None, out, err, time.monotonic() - start)
    finally:  # interrupted too (SIGTERM, Ctrl-C): the step's whole group ends with it
        end_group(proc)
        _CHILDREN.discard(proc)


def end_group(proc: subprocess.Popen) -> None:
    """Kill the process group a child leads (its own children too), if it is still there."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def on_signal(signum: int, frame: Any) -> None:
    """SIGTERM (a caller's timeout): unwind, so that every running step's group is ended."""
    raise SystemExit(128 + signum)


def resnetkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnetkit", *args]


_HELP: dict[str, str] = {}


def train_flags() -> str:
    """The train command's help text (read once): which optional flags this version has."""
    if "train" not in _HELP:
        _HELP["train"] = run(resnetkit("train", "--help"), 120).out
    return _HELP["train"]


def dry_test(flags: str) -> list[str]:
    """A dry run's test split shrunk, where this version's train has --test-subset."""
    return DRY_TEST if "--test-subset" in flags else []


def read_report(folder: Path) -> dict[str, Any]:
    path = folder / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# ------------------------------------------------------------------ the steps
def step_environment(ctx: Context, cap: float) -> dict[str, Any]:
    code = ("import json, torch, torchvision; c = torch.cuda.is_available(); print(json.dumps({"
            "'torch': torch.__version__, 'torchvision': torchvision.__version__, "
            "'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version() if c else None, "
            "'device': torch.cuda.get_device_name(0) if c else 'cpu', "
            "'capability': list(torch.cuda.get_device_capability(0)) if c else None, "
            "'bf16': torch.cuda.is_bf16_supported() if c else None, "
            "'gpus': torch.cuda.device_count()}))")
    r = run([sys.executable, "-c", code], cap)
    if not r.ok:
        return {"status": "failed", "why": r.why()}
    info = json.loads(r.out.strip().splitlines()[-1])
    info["python"] = platform.python_version()
    if shutil.which("nvidia-smi"):
        smi = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                   "--format=csv,noheader"], 20)
        info["nvidia_smi"] = smi.out.strip() if smi.ok else smi.why()
    if not ctx.dry_run and info["device"] == "cpu":
        return {"status": "failed", "why": "no CUDA device is visible to torch", **info}
    return {"status": "ok", **info}


def step_bench(ctx: Context, cap: float) -> dict[str, Any]:
    nets = [("resnet18", "3,224,224", "256"), ("resnet9", "3,32,32", "512")]
    extra = ["--steps", "20", "--warmup", "5"]
    if ctx.dry_run:
        nets = [("resnet18", "3,32,32", "2"), ("resnet9", "3,16,16", "2")]
        extra = ["--steps", "1", "--warmup", "1", "--no-compile"]
    rows: dict[str, Any] = {}
    for i, (model, size, batch) in enumerate(nets):
        share = (ctx.step_left()) / (len(nets) - i)
        r = run(resnetkit("bench", "--model", model, "--input-size", size, "--batch-size", batch,
                          "--device", ctx.device, "--json", *extra), share)
        rows[model] = json.loads(r.out) if r.ok else {"status": "failed", "why": r.why()}
    failed = [m for m, v in rows.items() if v.get("status") == "failed"]
    return {"status": "failed" if len(failed) == len(rows) else "ok", "nets": rows}


def step_cifar_fast(ctx: Context, cap: float) -> dict[str, Any]:
    flags = train_flags()
    base = ["train", "--dataset", "cifar10", "--recipe", "fast", "--device", ctx.device]
    if ctx.data_dir:
        base += ["--data-dir", ctx.data_dir]
    if "--val-size" in flags:
        base += ["--val-size", "0"]  # judged on wall time: train on all 50k, report the last epoch
    if ctx.dry_run:
        base += ["--subset", "40", "--epochs", "1", "--batch-size", "8", "--no-compile", *dry_test(flags)]
    runs: list[dict[str, Any]] = []
    for seed in SEEDS[:1] if ctx.dry_run else SEEDS:
        left = ctx.step_left()
        if runs and left < 1.2 * max(r["wall_s"] for r in runs):
            break  # another seed would not finish
        folder = ctx.out / f"cifar-fast-{seed}"
        shutil.rmtree(folder, ignore_errors=True)
        r = run(resnetkit(*base, "--seed", str(seed), "--out", str(folder)), left)
        if not r.ok:
            runs.append({"seed": seed, "status": "failed", "why": r.why(), "wall_s": r.seconds})
            break
        rep = read_report(folder)
        runs.append({"seed": seed, "status": "ok", "wall_s": round(r.seconds, 1),
                     "top1": rep.get("top1"), "selected_on": rep.get("selected_on"),
                     "runtime": rep.get("runtime")})
        if seed:  # seed 0's run is what the export step exports
            shutil.rmtree(folder, ignore_errors=True)
    good = [r for r in runs if r["status"] == "ok"]
    if not good:
        return {"status": "failed" if runs else "skipped", "runs": runs,
                "why": runs[0]["why"] if runs else "no time left"}
    return {"status": "ok", "runs": runs, "target": TARGET,
            "reached": sum(1 for r in good if (r["top1"] or 0) >= TARGET)}


def step_paper(ctx: Context, cap: float) -> dict[str, Any]:
    flags = train_flags()
    rows = {}
    nets = ["resnet20", "resnet56"]
    for i, model in enumerate(nets):
        left = ctx.step_left()
        share = left / (len(nets) - i)
        folder = ctx.out / f"paper-{model}"
        shutil.rmtree(folder, ignore_errors=True)
        args = ["train", "--dataset", "cifar10", "--model", model, "--device", ctx.device,
                "--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "1e-4", "--batch-size", "128",
                "--schedule", "step", "--warmup-epochs", "0", "--label-smoothing", "0",
                "--out", str(folder)]
        if ctx.data_dir:
            args += ["--data-dir", ctx.data_dir]
        if ctx.dry_run:
            args += ["--subset", "40", "--epochs", "1", "--batch-size", "8", *dry_test(flags)]
        elif "--time-budget" in flags:
            args += ["--time-budget", f"{max(int(share * 0.9), 10)}s"]  # epochs fitted to the time
        else:
            args += ["--epochs", "10"]
        r = run(resnetkit(*args), share)
        rep = read_report(folder)
        cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        if r.ok and rep:
            rows[model] = {"status": "ok", "epochs": cfg.get("epochs"), "wall_s": round(r.seconds, 1),
                           "test_error_pct": round(100 * (1 - rep["top1"]), 2),
                           "paper_error_pct": PAPER_ERROR[model]}
        else:
            rows[model] = {"status": "failed", "why": r.why()}
        shutil.rmtree(folder, ignore_errors=True)
    ok = any(v["status"] == "ok" for v in rows.values())
    return {"status": "ok" if ok else "failed", "nets": rows}


def step_ddp(ctx: Context, cap: float) -> dict[str, Any]:
    """The same short run twice, plainly and under torchrun with one process: the numbers must
    agree (NCCL on a GPU, gloo on the CPU)."""
    args = ["train", "--dataset", "cifar10", "--model", "resnet20", "--epochs", "2", "--subset",
            "5000", "--device", ctx.device, "--seed", "0"]
    if ctx.data_dir:
        args += ["--data-dir", ctx.data_dir]
    if ctx.dry_run:
        args = [a if a != "5000" else "40" for a in args] + ["--epochs", "1", "--batch-size", "8",
                                                             *dry_test(train_flags())]
    out: dict[str, Any] = {}
    for name, extra in (("plain", []), ("torchrun", ["--nproc", "1"])):
        folder = ctx.out / f"ddp-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        r = run(resnetkit(*args, *extra, "--out", str(folder)),
                (ctx.step_left()) / (2 if name == "plain" else 1))
        rep = read_report(folder)
        out[name] = ({"wall_s": round(r.seconds, 1), "top1": rep.get("top1")} if r.ok and rep
                     else {"status": "failed", "why": r.why()})
        shutil.rmtree(folder, ignore_errors=True)
    ok = all("top1" in v for v in out.values())
    if ok:
        out["same_top1"] = out["plain"]["top1"] == out["torchrun"]["top1"]
    return {"status": "ok" if ok else "failed", **out}


def step_export(ctx: Context, cap: float) -> dict[str, Any]:
    """Export the CIFAR fast run's model (else a one-epoch digits model) and check parity."""
    folder = ctx.out / "cifar-fast-0"
    if not (folder / "best.safetensors").is_file() and not (folder / "last.safetensors").is_file():
        folder = ctx.out / "export-run"
        shutil.rmtree(folder, ignore_errors=True)
        r = run(resnetkit("train", "--epochs", "1", "--device", ctx.device, "--out", str(folder)),
                ctx.step_left() / 2)  # the bundled digits: no dataset needed
        if not r.ok:
            return {"status": "failed", "why": f"training the model to export: {r.why()}"}
    e = run(resnetkit("export", str(folder), "--format", "onnx", "--check", "64"), ctx.step_left() / 2)
    result: dict[str, Any] = {"status": "ok" if e.ok else "failed",
                              "onnx_parity_cpu": (e.out.strip().splitlines() or [""])[-1] if e.ok else e.why()}
    code = ("import json, onnxruntime as ort; print(json.dumps('CUDAExecutionProvider' in "
            "ort.get_available_providers()))")
    has_cuda_ep = run([sys.executable, "-c", code], 30)
    if has_cuda_ep.ok and has_cuda_ep.out.strip() == "true" and not ctx.dry_run:
        result["onnx_parity_cuda"] = _cuda_parity(folder, ctx.step_left())
    else:
        result["onnx_parity_cuda"] = "skipped: onnxruntime-gpu (CUDAExecutionProvider) is not installed"
    shutil.rmtree(folder, ignore_errors=True)
    return result


def _cuda_parity(folder: Path, cap: float) -> str:
    code = f"""
import numpy as np, onnxruntime as ort, torch, json
from resnetkit.checkpoint import load_checkpoint
ck = load_checkpoint({str(folder)!r}, map_location="cuda")
x = torch.randn(32, ck.spec.in_chans, ck.spec.img_size, ck.spec.img_size)
with torch.no_grad():
    ref = ck.model(x.cuda()).float().cpu().numpy()
s = ort.InferenceSession({str(folder / 'model.onnx')!r}, providers=["CUDAExecutionProvider"])
got = s.run(None, {{s.get_inputs()[0].name: x.numpy()}})[0]
print(json.dumps(float(np.abs(got - ref).max())))
"""
    r = run([sys.executable, "-c", code], cap)
    return f"max |logit difference| {float(r.out.strip()):.2e}" if r.ok else r.why()


STEPS: list[tuple[str, float, Callable[[Context, float], dict[str, Any]]]] = [
    ("environment", 60, step_environment),
    ("bench", 150, step_bench),
    ("cifar10_fast", 170, step_cifar_fast),
    ("paper_table6", 110, step_paper),
    ("ddp", 60, step_ddp),
    ("export", 60, step_export),
]


# ------------------------------------------------------------------ the markdown section
def markdown(results: dict[str, Any]) -> str:
    env = results.get("environment", {})
    lines = [f"## GPU ({env.get('device', '?')}, {results.get('date')})", "",
             f"Command: `{results.get('command')}`. torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn')}, driver/GPU: {env.get('nvidia_smi', '?')}."
             + (" **Dry run at toy size on the CPU: no figure here is a GPU measurement.**"
                if results.get("dry_run") else ""), ""]
    for name, _, _ in STEPS[1:]:
        step = results.get(name, {"status": "not run"})
        lines.append(f"### {name} ({step.get('status')})")
        if step.get("why"):
            lines.append(f"- {step['why']}")
        lines += _details(name, step)
        lines.append("")
    return "\n".join(lines)


def _details(name: str, step: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if name == "bench":
        for model, res in step.get("nets", {}).items():
            if "rows" not in res:
                out.append(f"- {model}: {res.get('why', '')}")
                continue
            out.append(f"- {model} at {res['input_size']}, batch {res['batch_size']}:")
            for row in res["rows"]:
                setting = " + ".join([row["precision"]] + ["channels_last"] * row["channels_last"]
                                     + ["compile"] * row["compile"])
                speed = (f"{row['images_per_s']:,.0f} images/s ({row['speedup']:.2f}x fp32 eager)"
                         if not row.get("error") else f"failed: {row['error']}")
                out.append(f"  - {row['mode']} {setting}: {speed}")
    elif name == "cifar10_fast":
        for r in step.get("runs", []):
            out.append(f"- seed {r['seed']}: {r.get('top1')} test top-1 in {r.get('wall_s')} s "
                       f"(whole process) {r.get('why', '')}")
    elif name == "paper_table6":
        for model, r in step.get("nets", {}).items():
            out.append(f"- {model}: {r.get('epochs')} epochs, test error {r.get('test_error_pct')}% "
                       f"(paper {PAPER_ERROR[model]}%, 164 epochs) {r.get('why', '')}")
    elif name == "ddp":
        for k in ("plain", "torchrun"):
            if k in step:
                out.append(f"- {k}: {step[k]}")
        if "same_top1" in step:
            out.append(f"- same test top-1: {step['same_top1']}")
    elif name == "export":
        out += [f"- ONNX parity (CPU runtime): {step.get('onnx_parity_cpu')}",
                f"- ONNX parity (CUDA runtime): {step.get('onnx_parity_cuda')}"]
    return out


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/gpu", help="folder for gpu.json and gpu.md")
    p.add_argument("--data-dir", help="where CIFAR-10 is (default: $RESNETKIT_DATA)")
    p.add_argument("--budget", type=float,
                   help=f"seconds for all steps (default 470; a dry run {DRY_RUN_BUDGET})")
    p.add_argument("--dry-run", action="store_true", help="every step at toy size on the CPU")
    p.add_argument("--only", help="comma-separated step names (default: all)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return visit(args, argv)
    finally:
        for proc in list(_CHILDREN):  # whatever ended the visit, no step keeps running without it
            end_group(proc)


def visit(args: argparse.Namespace, argv: list[str] | None) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, dry_run=args.dry_run, data_dir=args.data_dir or os.environ.get("RESNETKIT_DATA"),
                  deadline=time.monotonic() + (args.budget or (DRY_RUN_BUDGET if args.dry_run else 470)))
    ctx.results = {"date": date.today().isoformat(), "dry_run": args.dry_run,
                   "command": "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    only = set(args.only.split(",")) if args.only else None
    for name, cap, fn in STEPS:
        if only and name not in only and name != "environment":
            continue
        left = ctx.left()
        if left < 5:
            ctx.results[name] = {"status": "skipped", "why": "the time budget was spent"}
        else:
            step_cap = min(cap * (DRY_RUN_SLACK if args.dry_run else 1), left)
            ctx.step_deadline = time.monotonic() + step_cap
            start = time.monotonic()
            try:
                ctx.results[name] = fn(ctx, step_cap)
            except Exception as e:  # noqa: BLE001 - a broken step must not cost the others
                ctx.results[name] = {"status": "failed", "why": f"{type(e).__name__}: {e}"}
            ctx.results[name]["seconds"] = round(time.monotonic() - start, 1)
        print(f"{name}: {ctx.results[name]['status']}"
              f"{' - ' + ctx.results[name]['why'] if ctx.results[name].get('why') else ''}", flush=True)
        ctx.save()
        if name == "environment" and ctx.results[name]["status"] != "ok":
            break  # no GPU: nothing else can be measured
    (out / "gpu.md").write_text(markdown(ctx.results) + "\n")
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")
    failed = [n for n, r in ctx.results.items() if isinstance(r, dict) and r.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
