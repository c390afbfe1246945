"""``resnetkit finetune DATA_DIR``: fine-tune a pretrained ImageNet ResNet on a folder of photos.

The usual choice in one command (``train --dataset imagefolder --recipe finetune``): resnet18 with
torchvision's ImageNet weights, a new head for the folder's classes, the weights' preprocessing,
two epochs training the head alone, then every layer with the backbone at lr x 0.1 (AdamW, cosine).
Every ``resnetkit train`` flag works here and wins over these defaults.
"""
from __future__ import annotations

import argparse
from typing import Any

from ..config import FINETUNE_RECIPE as R
from ..errors import UserError
from .train import S, config_values, flag_table

# DATA_DIR says it all; resume and several processes: 'resnetkit train', which launches them
SKIP = ("--dataset", "--data-dir", "--download", "--resume", "--nproc")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a pretrained ImageNet ResNet on a folder of images",
        description=f"Fine-tune a pretrained ResNet on DATA_DIR (one sub-folder of images per class, or "
                    f"train/ and val/ trees of them). Defaults: --model {R['model']} --pretrained "
                    f"{R['pretrained']} --freeze-epochs {R['freeze_epochs']} --epochs {R['epochs']} "
                    f"--optimizer {R['optimizer']} --lr {R['lr']:g} (backbone x0.1 after unfreezing) "
                    f"--schedule {R['schedule']} --batch-size {R['batch_size']}; the weights' own "
                    f"preprocessing (resize, crop, mean, std). Any 'resnetkit train' flag wins.")
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder with one sub-folder of images per class")
    p.add_argument("--config", metavar="FILE", default=S, help="YAML or JSON file of train's keys")
    for group, flags in flag_table("imagefolder").items():  # no --keys, --classes, --columns: not read
        g = p.add_argument_group(group)
        for flag, kw in flags:
            if flag not in SKIP:
                g.add_argument(flag, default=S, **kw)
    p.set_defaults(func=run)
    return p


def finetune_values(args: argparse.Namespace) -> dict[str, Any]:
    """RunConfig fields: the folder, the finetune recipe, then --config and flags on top."""
    values = config_values(args)
    values.pop("data_dir", None)
    return {"recipe": "finetune", **values, "dataset": "imagefolder", "data_dir": args.data_dir}


def run(args: argparse.Namespace) -> int:
    from ..training import finetune, train  # lazy dispatch: torch loads only to train

    values = finetune_values(args)
    if values.get("resume"):
        raise UserError("finetune --resume: continue a run with 'resnetkit train --resume RUN_DIR'")
    for line in finetune.plan_lines(values):
        print(line, flush=True)
    train(values)
    return 0
