"""``resnetkit explain CHECKPOINT IMAGE...  --out DIR``: Grad-CAM heat maps of image files."""
from __future__ import annotations

import argparse
from pathlib import Path

from .._io import write_atomic
from ..errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explain", help="Grad-CAM heat maps: where the model looks in each image",
        description="For each image write OUT/<name>.png: the input and its Grad-CAM overlay side by "
                    "side (red: the regions that drove the score), captioned with the predicted class "
                    "and its probability. The map is taken on the last convolutional stage whose "
                    "map is at least 7x7 (--layer picks another). Exit status 1 when some file could "
                    "not be read.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR")
    p.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="+", help="files, folders (recursive), globs")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures (created)")
    p.add_argument("--class", dest="target", metavar="NAME",
                   help="explain this class instead of each image's predicted one")
    p.add_argument("--method", choices=("gradcam", "gradcam++"), default="gradcam",
                   help="gradcam (Selvaraju et al. 2017, default) or gradcam++ (Chattopadhay et al. 2018)")
    p.add_argument("--layer", metavar="NAME",
                   help="module whose feature map Grad-CAM weights, e.g. layer3 or layer4.1 (default: "
                        "the last stage whose map is at least 7x7; the map is upsampled to the input)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import predict  # lazy dispatch: torch loads only to run

    paths = predict.collect_images(args.images)
    if not paths:
        raise UserError(f"no image files found in {', '.join(args.images)}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    predict.output_folder(args.out, "--out")
    clf = predict.load(args.checkpoint, device=args.device)
    if args.target is not None:
        clf.class_index(args.target)  # an unknown class stops here, before any work
    out, names = Path(args.out), predict.output_names(paths)
    failed = 0
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        results = clf.explain(chunk, target=args.target, method=args.method, batch_size=args.batch_size,
                              layer=args.layer)
        for r, name in zip(results, names[start:start + args.batch_size]):
            if "error" in r:
                failed += 1
                print(f"{r['path']}  error: {r['error']}", flush=True)
                continue
            dest = out / f"{name}.png"
            write_atomic(dest, lambda tmp: r["image"].save(tmp, format="PNG"))
            print(f"{r['path']}  -> {r['class']} ({100 * r['prob']:.1f}%), map of {r['target']}: {dest}",
                  flush=True)
    return 1 if failed else 0
