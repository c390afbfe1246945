"""``resnetkit data``: ``check`` a dataset for problems, ``list`` the known datasets."""
from __future__ import annotations

import argparse
import json
from typing import Any, Mapping

from .train import FLAGS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="inspect datasets: check one, list them",
                              description="Inspect datasets before training.")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")

    c = sub.add_parser(
        "check", help="counts, sizes, statistics and problems of a dataset",
        description="Per split: image count, class counts, image sizes, per-channel mean/std; "
                    "problems: unreadable files, exact duplicates (within and across splits), "
                    "class imbalance, a last training batch of one sample. Exit status 0 even "
                    "when problems are found.")
    c.add_argument("dataset", metavar="DATASET",
                   help="digits, mnist, fashion-mnist, cifar10, cifar100, imagefolder, arrays or csv")
    c.add_argument("--data-dir", metavar="DIR",
                   help="where the data lives (default $RESNETKIT_DATA, else ~/.cache/resnetkit/data); "
                        "for imagefolder the folder of class sub-folders, for arrays and csv the file")
    for flag, kw in FLAGS["data"]:  # the train flags of the same names
        if flag in ("--keys", "--classes", "--columns"):
            c.add_argument(flag, **kw)
    c.add_argument("--batch-size", type=int, metavar="B", help="training batch size to check against")
    c.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                   help="held-out fraction for a folder with no val/ or test/ (default 0.2)")
    c.add_argument("--seed", type=int, default=0, help="seed of that split (default 0)")
    c.add_argument("--workers", type=int, metavar="N", help="processes decoding images")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=run)

    ls = sub.add_parser("list", help="the datasets resnetkit knows, with their presets")
    ls.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import check, presets  # lazy dispatch: torch loads only to run

    if args.data_command == "list":
        return run_list(presets.PRESETS)
    report = check.check_dataset(args.dataset, args.data_dir, args.batch_size, val_fraction=args.val_fraction,
                                 seed=args.seed, workers=args.workers, keys=args.keys,
                                 classes=args.classes, columns=args.columns)
    print(json.dumps(report, indent=2) if args.json else check.format_report(report))
    return 0


def run_list(presets: Mapping[str, Any]) -> int:
    rows = [("dataset", "size", "channels", "augmentation", "")]
    for p in presets.values():
        aug = ["pad %d crop" % p.pad if p.pad else "", "flip" if p.flip else "",
               "random resized crop" if p.rrc_scale else ""]
        rows.append((p.name, f"{p.img_size}px", str(p.in_chans), ", ".join(a for a in aug if a) or "-",
                     p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])
    return 0
