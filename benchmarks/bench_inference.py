"""Inference speed: eager PyTorch, faster PyTorch paths, onnxruntime fp32 and int8.

For each model: images/s at batch 1 and 64 (median of --runs runs) and top-1 agreement with
eager fp32 on the same 64 inputs. Random weights and random inputs are fine for speed; with
--checkpoint the trained model runs on its own test images instead.

    python benchmarks/bench_inference.py                      # resnet18 @ 224 and resnet20 @ 32
    python benchmarks/bench_inference.py --model resnet56 --input-size 32
    python benchmarks/bench_inference.py --checkpoint runs/cifar10-resnet20-... --write BENCHMARKS.md

Prints markdown table rows; --write FILE puts them between the markers
``<!-- inference:start -->`` and ``<!-- inference:end -->`` of FILE (appending the section if absent).
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import re
import shlex
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from resnetkit import backends as B
from resnetkit import export as E
from resnetkit import runtime as R
from resnetkit.specs import DatasetSpec

DEFAULT_MODELS = (("resnet18", 224), ("resnet20", 32))  # ImageNet-size net; the CIFAR recipe's net
HEADER = ("| model | input | path | batch 1 (img/s) | batch 64 (img/s) | top-1 agreement vs eager fp32 |\n"
          "|---|---|---|---:|---:|---:|")


@dataclass
class Row:
    model: str
    input: str
    path: str
    ips: dict[int, float | None]
    agreement: float | None
    note: str = ""

    def markdown(self, best: bool = False) -> str:
        cells = [f"{v:,.0f}" if v else "n/a" for v in (self.ips.get(1), self.ips.get(64))]
        agree = f"{self.agreement:.1%}" if self.agreement is not None else "n/a"
        name = f"**{self.path}**" if best else self.path
        note = f" ({self.note})" if self.note else ""
        return f"| {self.model} | {self.input} | {name}{note} | {cells[0]} | {cells[1]} | {agree} |"


# ------------------------------------------------------------------ models and inputs
def build_model(name: str, size: int, num_classes: int) -> nn.Module:
    try:
        from resnetkit.models import create_model

        model = create_model(name, num_classes=num_classes, in_chans=3)
    except (ImportError, AttributeError):
        import torchvision  # the registry is the reference; torchvision only stands in for it

        model = getattr(torchvision.models, name)(num_classes=num_classes)
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial BN statistics, as in a trained net
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def random_setup(name: str, size: int) -> tuple[nn.Module, DatasetSpec, torch.Tensor, str]:
    classes = 1000 if size >= 128 else 10
    spec = DatasetSpec("random", tuple(str(i) for i in range(classes)), 3, size,
                       (0.5,) * 3, (0.25,) * 3)
    return build_model(name, size, classes), spec, B.random_inputs(spec, 64), f"{size} px"


def checkpoint_setup(path: str) -> tuple[nn.Module, DatasetSpec, torch.Tensor, torch.Tensor, str, str]:
    """A trained model with 64 test images to time and 256 train images to calibrate int8 on."""
    from resnetkit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    x, source = B.sample_inputs(ckpt.config, ckpt.spec, 64, "test")
    calib, _ = B.sample_inputs(ckpt.config, ckpt.spec, 256, "train")
    label = f"{ckpt.spec.img_size} px {ckpt.spec.name}" + ("" if "random" in source else " test")
    return ckpt.model, ckpt.spec, x, calib, label, ckpt.arch


# ------------------------------------------------------------------ paths
def torch_paths(model: nn.Module) -> dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]]:
    """Each entry builds a callable (lazily: compiling is expensive) that maps inputs to logits."""
    import copy

    def eager() -> Callable[[torch.Tensor], torch.Tensor]:
        return model

    def channels_last() -> Callable[[torch.Tensor], torch.Tensor]:
        m = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return lambda x: m(x.contiguous(memory_format=torch.channels_last))

    def bf16() -> Callable[[torch.Tensor], torch.Tensor]:
        m = copy.deepcopy(model).to(memory_format=torch.channels_last)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(x.contiguous(memory_format=torch.channels_last)).float()
        return run

    def compiled() -> Callable[[torch.Tensor], torch.Tensor]:
        # dynamic=False: one specialised graph per batch size, the fastest steady state.
        return torch.compile(copy.deepcopy(model), dynamic=False)

    def compiled_bf16() -> Callable[[torch.Tensor], torch.Tensor]:
        m = torch.compile(copy.deepcopy(model).to(memory_format=torch.channels_last), dynamic=False)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(x.contiguous(memory_format=torch.channels_last)).float()
        return run

    return {"eager fp32": eager, "channels_last fp32": channels_last,
            "channels_last + bf16 autocast": bf16, "torch.compile fp32": compiled,
            "torch.compile + channels_last + bf16": compiled_bf16}


def onnx_paths(model: nn.Module, spec: DatasetSpec, calib: torch.Tensor, folder: Path
               ) -> dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]]:
    fp32 = folder / "model.onnx"

    def ort_fp32() -> Callable[[torch.Tensor], torch.Tensor]:
        E.export_onnx(model, spec, fp32)
        return B.OnnxBackend(fp32).predict_logits

    def ort_int8() -> Callable[[torch.Tensor], torch.Tensor]:
        from resnetkit.quantize import quantize_onnx

        if not fp32.exists():
            E.export_onnx(model, spec, fp32)
        int8 = folder / "model-int8.onnx"
        quantize_onnx(fp32, int8, B.batches(calib, 16), calib_source=f"{len(calib)} images")
        return B.OnnxBackend(int8).predict_logits

    return {"onnxruntime fp32": ort_fp32, "onnxruntime int8 (static QDQ)": ort_int8}


def measure(build: Callable[[], Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
            reference: torch.Tensor, runs: int) -> tuple[dict[int, float | None], float | None, str]:
    try:
        fn = build()
        with torch.inference_mode():
            out = torch.cat([fn(b) for b in B.batches(x, 64)]).float()
            agreement = float((out.argmax(1) == reference.argmax(1)).float().mean())
            ips = {b: R.images_per_second(fn, x[:b].contiguous(), runs=runs, min_seconds=0.3, warmup=2)
                   for b in (1, 64)}
        return ips, agreement, ""
    except Exception as e:  # noqa: BLE001 - a path that fails on this machine is reported, not fatal
        return {1: None, 64: None}, None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"


def bench_model(model: nn.Module, spec: DatasetSpec, x: torch.Tensor, label: str, name: str,
                runs: int, skip: Sequence[str] = (), calib: torch.Tensor | None = None
                ) -> list[tuple[Row, bool]]:
    """Rows for every path; int8 is calibrated on ``calib`` (default: the benchmark inputs)."""
    x = x.repeat((64 + len(x) - 1) // len(x), 1, 1, 1)[:64].contiguous()
    with torch.inference_mode():
        reference = model(x).float()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="resnetkit-bench-") as tmp:
        calib = x if calib is None else calib
        paths = {**torch_paths(model), **onnx_paths(model, spec, calib, Path(tmp))}
        for path, build in paths.items():
            if any(s in path for s in skip):
                continue
            print(f"  {name} @ {label}: {path} ...", file=sys.stderr, flush=True)
            ips, agreement, note = measure(build, x, reference, runs)
            rows.append(Row(name, label, path, ips, agreement, note))
    torch_rows = [r for r in rows if not r.path.startswith("onnx") and r.ips.get(64)]
    best = max(torch_rows, key=lambda r: r.ips[64] or 0.0, default=None)
    return [(r, r is best and r.path != "eager fp32") for r in rows]


# ------------------------------------------------------------------ report
def section(rows: list[tuple[Row, bool]], argv: Sequence[str], runs: int, command: str | None = None) -> str:
    import onnxruntime

    from resnetkit.bench import cpu_model

    cmd = command or "python benchmarks/bench_inference.py" + "".join(f" {shlex.quote(a)}" for a in argv)
    lines = [
        "### Inference speed (CPU)",
        "",
        f"`{cmd}` on {datetime.date.today().isoformat()}: {cpu_model()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__.split('+')[0]} "
        f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
        f"Python {platform.python_version()}.",
        f"images/s: median of {runs} runs; agreement: top-1 on the same 64 inputs as eager fp32 "
        "(random weights and inputs unless a checkpoint is named). **Bold**: the fastest PyTorch "
        "path at batch 64.",
        "",
        HEADER,
        *[r.markdown(best) for r, best in rows],
    ]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    from _md import write_section as write_marked  # benchmarks/_md.py, shared with run.py

    write_marked(path, "inference", text)


def default_size(name: str) -> int:
    """32 px for the CIFAR-style 6n+2 nets (resnet20, plain56, ...), 224 for ImageNet nets."""
    m = re.fullmatch(r"(?:resnet|plain)(\d+)", name)
    return 32 if m and (int(m.group(1)) - 2) % 6 == 0 else 224


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=None,
                   help="registry name (repeatable); default: resnet18 @ 224 and resnet20 @ 32")
    p.add_argument("--input-size", type=int, action="append", default=None,
                   help="input size for each --model (default 224 for ImageNet nets, else 32)")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="also benchmark a trained checkpoint or run folder on its test images")
    p.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median; >= 3)")
    p.add_argument("--skip", action="append", default=[],
                   help="skip paths whose name contains this (e.g. 'compile')")
    p.add_argument("--write", type=Path, default=None, metavar="FILE",
                   help="write the rows into FILE between the inference markers")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    text = run(argv, args)
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


def run(argv: Sequence[str], args: argparse.Namespace | None = None, command: str | None = None) -> str:
    """The section's markdown; ``command``: the command line to record (default: this script's)."""
    args = args or parse(argv)
    if args.runs < 3:
        raise SystemExit("bench_inference.py: --runs must be at least 3 (the median of 3 or more runs)")
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU
    if args.model:
        sizes = args.input_size or []
        todo = [(m, sizes[i] if i < len(sizes) else default_size(m)) for i, m in enumerate(args.model)]
    else:
        todo = [] if args.checkpoint else list(DEFAULT_MODELS)
    rows: list[tuple[Row, bool]] = []
    for name, size in todo:
        model, spec, x, label = random_setup(name, size)
        rows += bench_model(model, spec, x, label, name, args.runs, args.skip)
    for ckpt in args.checkpoint:
        model, spec, x, calib, label, arch = checkpoint_setup(ckpt)
        rows += bench_model(model, spec, x, label, f"{arch} (trained)", args.runs, args.skip, calib)
    return section(rows, argv, args.runs, command)


if __name__ == "__main__":
    raise SystemExit(main())
