"""``resnetkit export``: a checkpoint to ONNX or TorchScript, checked against PyTorch."""
from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX or TorchScript (classes and preprocessing inside)",
        description="Write a checkpoint as ONNX or TorchScript with its class names and preprocessing "
                    "in the file's metadata, then compare its logits with PyTorch on real test images "
                    "(random inputs when the dataset is not at hand). Exit status 2 beyond the tolerance.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR",
                   help="a .safetensors checkpoint or a run folder (its best checkpoint)")
    p.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx",
                   help="output format (default: onnx)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="output file (default: model.onnx / model.ts next to the checkpoint)")
    p.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                   help="ONNX: symbolic batch dimension (default); --no-dynamic-batch fixes it at 1")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset version, from 7 to the newest the installed onnx package knows; below "
                        "18 the TorchScript-based exporter writes it (default: the exporter's, 20 with "
                        "torch 2.14)")
    p.add_argument("--check", type=int, default=64, metavar="N",
                   help="compare with PyTorch on N inputs (default 64; 0 skips)")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="largest allowed absolute logit difference (default 1e-3) ...")
    p.add_argument("--rtol", type=float, default=1e-5,
                   help="... plus this times the largest |logit| (default 1e-5: float32 rounding "
                        "grows with the logits)")
    p.add_argument("--int8", action="store_true",
                   help="also write <name>-int8.onnx (static QDQ quantization) and report its "
                        "accuracy and speed against fp32")
    p.add_argument("--calib", type=int, default=256, metavar="N",
                   help="training images used to calibrate int8 ranges (default 256)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the checkpoint's dataset is, if not where it was trained from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_checkpoint  # lazy dispatch: torch loads only to run

    result = export_checkpoint(args.checkpoint, fmt=args.fmt, out=args.out,
                               dynamic_batch=args.dynamic_batch, opset=args.opset, check=args.check,
                               atol=args.atol, rtol=args.rtol, int8=args.int8, calib=args.calib,
                               data_dir=args.data_dir)
    for line in result.lines():
        print(line)
    return 0
