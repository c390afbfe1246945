"""Named training presets: ``RECIPES[name][dataset]`` -> RunConfig fields.

A recipe fills in what the user left open; a flag, a ``--config`` file key or a keyword of
:func:`resnetkit.train` always wins. ``default`` is tuned for accuracy within a small budget;
``fast`` is tuned for time to a target accuracy on a laptop CPU (MNIST, Fashion-MNIST; it falls
back to ``default`` for the other datasets). Learning rates are peak values: the maximum of the one-cycle
schedule, the start of the cosine and step schedules.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Iterable, Mapping

from ..config import FINETUNE_RECIPE, RunConfig, check_choice, check_data_sizes
from ..data.presets import get_preset
from ..models import list_models, model_info
from ..data.splits import check_val_options
from ..errors import UserError
from .budget import parse_duration

# What every recipe starts from; a dataset entry only lists what differs.
BASE: dict[str, Any] = {
    "optimizer": "sgd",  # momentum 0.9, Nesterov
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "warmup_epochs": None,  # None: a quarter of the run (one-cycle) or none (cosine, step, constant)
    "label_smoothing": 0.1,  # Szegedy et al. 2015, arXiv:1512.00567
    "augment": "basic",
}

# Builder options a recipe gives whichever model the user picks, where its builder takes them
# (``model_options``; ``model_args`` belong to the recipe's own model).
OWN_DATA_OPTIONS = {"zero_init_residual": True}

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        # 1,437 training images of 8x8: 98.6-100% test accuracy over seeds 0-5, ~10 s on a CPU.
        # Threads: the speed probe's choice (a run too short to probe takes one thread).
        "digits": {"model": "resnet8", "epochs": 20, "batch_size": 64, "lr": 0.2},
        "mnist": {"model": "resnet8", "epochs": 5, "batch_size": 128, "lr": 0.2},
        "fashion-mnist": {"model": "resnet20", "epochs": 15, "batch_size": 128, "lr": 0.2},
        # He et al. 2015, section 4.2: SGD 0.1, batch 128, wd 1e-4 for 64k steps (~164 epochs);
        # one-cycle reaches about the same in far fewer epochs.
        "cifar10": {"model": "resnet20", "epochs": 30, "batch_size": 128, "lr": 0.2},
        "cifar100": {"model": "resnet32", "epochs": 40, "batch_size": 128, "lr": 0.2},
        # Your own photos, any family (resnet18..152, resnext, wide, densenet, preact, dy, d2l):
        # every residual branch starts at zero (its last BN's weight, timm's default; Goyal et al.
        # 2017, arXiv:1706.02677), so a 16-block bottleneck net starts as a shallow one. Without it
        # resnet50 at lr 0.05 diverged in its first epoch (BENCHMARKS.md, own-data).
        "imagefolder": {"model": "resnet18", "epochs": 20, "batch_size": 64, "lr": 0.05,
                        "schedule": "cosine", "warmup_epochs": 1, "model_options": OWN_DATA_OPTIONS},
        # your own data: images of any size, a few hundred to a few thousand of them
        "arrays": {"model": "resnet18", "epochs": 20, "batch_size": 64, "lr": 0.05,
                   "schedule": "cosine", "warmup_epochs": 1, "model_options": OWN_DATA_OPTIONS},
        "csv": {"model": "resnet18", "epochs": 20, "batch_size": 64, "lr": 0.05,
                "schedule": "cosine", "warmup_epochs": 1, "model_options": OWN_DATA_OPTIONS},
    },
    # Targets (BENCHMARKS.md): MNIST >= 99.5% and Fashion-MNIST >= 93% on a 2-core CPU, in wall time and
    # in TFLOP. No precision or memory format here: they are probed on the machine at hand
    # (resnetkit.probe). val_size 0: one-cycle ends annealed, so the last epoch is the result.
    # How these settings were reached: docs/benchmarks-history.md.
    "fast": {
        "mnist": {"model": "resnet8", "model_args": {"widths": [16, 32, 64], "stem_stride": 2},
                  "epochs": 6, "batch_size": 128, "lr": 0.2, "val_size": 0},
        "fashion-mnist": {"model": "resnet8", "model_args": {"widths": [24, 48, 96], "stem_stride": 2},
                          "epochs": 20, "batch_size": 512, "lr": 0.8, "min_img_size": 12,
                          "progressive_until": 0.75, "tta": True, "val_size": 0},
        # For a GPU: Page's ResNet-9 recipe ("How to train your ResNet", Myrtle.ai 2018: 94% in
        # 24 epochs), in mean-loss terms: SGD-Nesterov lr 0.4 (his 0.4 per summed batch of 512
        # with wd 5e-4 x 512), one-cycle with a 5/24 rise, label smoothing 0.2, flip + 4 px
        # reflect-padded translation on the device, TTA. 20 epochs: not yet measured on a GPU
        # (benchmarks/gpu.py measures it); on a CPU it runs, slowly.
        "cifar10": {"model": "resnet9", "epochs": 20, "batch_size": 512, "lr": 0.4,
                    "weight_decay": 5e-4, "warmup_epochs": 4, "label_smoothing": 0.2,
                    "augment": "basic", "tta": True, "eval_every": 5},
    },
}

# Fine-tuning pretrained ImageNet ResNets (resnetkit finetune): the same values for every dataset.
RECIPES["finetune"] = {name: dict(FINETUNE_RECIPE) for name in RECIPES["default"]}

# Values no recipe decides: where RunConfig says None and nothing else fills it in.
FALLBACK: dict[str, Any] = {"model": "resnet18", "epochs": 10, "batch_size": 64, "lr": 0.1, **BASE}


def recipe_values(name: str | None, dataset: str) -> dict[str, Any]:
    """The fields recipe ``name`` (None: default) sets for ``dataset``, base values included."""
    name = name or "default"
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=2)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown --recipe {name!r}; {hint}choose one of {', '.join(RECIPES)}")
    entry = RECIPES[name].get(dataset, RECIPES["default"].get(dataset, {}))
    return {**FALLBACK, **entry}


def resolve_config(cfg: RunConfig, explicit: Iterable[str] | None = None) -> RunConfig:
    """Fill ``cfg`` from its recipe: every field not in ``explicit`` takes the recipe's value.

    ``explicit`` names the fields the user set; None means "the fields that differ from
    RunConfig's defaults" (what a RunConfig built in Python can tell us).
    """
    if explicit is None:
        explicit = {f.name for f in dataclasses.fields(RunConfig)
                    if getattr(cfg, f.name) != getattr(RunConfig(), f.name)}
    explicit = set(explicit)
    values = recipe_values(cfg.recipe, cfg.dataset)
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in ("model_args", "model_options") and (key not in explicit or getattr(cfg, key) is None):
            changes[key] = value
    model_args = dict(cfg.model_args)
    if "model" not in explicit:
        # the recipe's model arguments belong to the recipe's model; the user's are added on top
        model_args = {**values.get("model_args", {}), **model_args}
    if values.get("model_options"):
        model = changes.get("model", cfg.model)
        takes = model_info(model).options if model in list_models() else {}
        model_args = {**{k: v for k, v in values["model_options"].items() if k in takes}, **model_args}
    if model_args != cfg.model_args:
        changes["model_args"] = model_args
    cfg = cfg.replace(recipe=cfg.recipe or "default", **changes)
    if ("warmup_epochs" not in explicit and cfg.warmup_epochs is not None
            and isinstance(cfg.epochs, int) and cfg.warmup_epochs >= cfg.epochs):
        # the recipe's warmup is for its own length; a shorter run (--epochs 1) warms up for
        # half of it instead of failing on a value the user never gave
        cfg = cfg.replace(warmup_epochs=cfg.epochs / 2)
    if cfg.freeze in (None, "none") and isinstance(cfg.freeze_epochs, int) and cfg.freeze_epochs > 0:
        # --freeze-epochs alone freezes the backbone (finetune.freeze_plan): config.json says so
        cfg = cfg.replace(freeze="backbone")
    return check_config(cfg)


def check_config(cfg: RunConfig) -> RunConfig:
    """Reject values no run can use, with the flag to fix."""
    for key in ("optimizer", "schedule", "precision", "device"):
        check_choice(key, getattr(cfg, key))
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "eval_every": cfg.eval_every,
                "nproc": cfg.nproc, **({"threads": cfg.threads} if cfg.threads is not None else {}),
                **({"max_steps": cfg.max_steps} if cfg.max_steps is not None else {})}
    for key, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    check_data_sizes(cfg)
    for key in ("lr", "weight_decay", "label_smoothing", "warmup_epochs", "backbone_lr_mult"):
        value = getattr(cfg, key, None)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise UserError(f"--{key.replace('_', '-')} must be a finite number, got {value!r}")
    if not cfg.lr or cfg.lr <= 0:
        raise UserError(f"--lr must be positive, got {cfg.lr!r}")
    if cfg.weight_decay < 0:
        raise UserError(f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), e.g. 0.1, got {cfg.label_smoothing}")
    if cfg.warmup_epochs is not None and not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise UserError(f"--warmup-epochs must be in [0, epochs={cfg.epochs}), got {cfg.warmup_epochs}")
    if cfg.ema is not None and not 0 < cfg.ema < 1:
        raise UserError(f"--ema is a decay per step in (0, 1), e.g. 0.99, got {cfg.ema}")
    if cfg.early_stop is not None and cfg.early_stop < 1:
        raise UserError(f"--early-stop is a patience in evaluations and must be >= 1, got {cfg.early_stop}")
    check_val_options(cfg)  # sizes against the data are checked when it is read
    if not isinstance(cfg.model_args, Mapping):
        raise UserError("model_args must be a mapping of builder keyword arguments")
    if cfg.model_args.get("features_only") or cfg.model_args.get("global_pool") == "":
        raise UserError("training needs class scores: features_only and global_pool='' give feature maps; "
                        "use them from Python (resnetkit.create_model) for your own head")
    if cfg.drop_rate is not None and not 0 <= cfg.drop_rate < 1:
        raise UserError(f"--drop-rate must be in [0, 1), got {cfg.drop_rate}")
    if cfg.time_budget is not None:
        cfg = cfg.replace(time_budget=parse_duration(cfg.time_budget))
    return check_toolbox(cfg)


def check_toolbox(cfg: RunConfig) -> RunConfig:
    """Mixing, imbalance, accumulation and clipping values."""
    for key in ("class_weights", "sampler"):
        check_choice(key, getattr(cfg, key))
    for key in ("mixup", "cutmix", "mix_prob", "mix_switch_prob", "clip_grad"):
        value = getattr(cfg, key)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise UserError(f"--{key.replace('_', '-')} must be a finite number, got {value!r}")
    for key in ("mixup", "cutmix"):
        if getattr(cfg, key) < 0:
            raise UserError(f"--{key} is a Beta(alpha, alpha) parameter: 0 (off) or positive, "
                            f"got {getattr(cfg, key)}")
    for key in ("mix_prob", "mix_switch_prob"):
        if not 0 <= getattr(cfg, key) <= 1:
            raise UserError(f"--{key.replace('_', '-')} is a probability in [0, 1], got {getattr(cfg, key)}")
    if not isinstance(cfg.accum_steps, int) or isinstance(cfg.accum_steps, bool) or cfg.accum_steps < 1:
        raise UserError(f"--accum-steps must be a positive integer, got {cfg.accum_steps!r}")
    if cfg.clip_grad is not None and not cfg.clip_grad > 0:
        raise UserError(f"--clip-grad is a gradient norm and must be positive, got {cfg.clip_grad}")
    if cfg.workers is not None and (not isinstance(cfg.workers, int) or isinstance(cfg.workers, bool)
                                    or cfg.workers < 0):
        raise UserError(f"--workers is a number of loader processes, 0 (load in this process) or more, "
                        f"got {cfg.workers!r}")
    return cfg


def describe(cfg: RunConfig) -> str:
    """The resolved training values in two short lines, printed when a run starts."""
    args = "".join(f" {k}={v}" for k, v in cfg.model_args.items())
    warm = "" if cfg.warmup_epochs is None else f" warmup={cfg.warmup_epochs}"
    extra = (f" | ema {cfg.ema:g}" if cfg.ema else "") + (
        f" | progressive {cfg.min_img_size}px -> full by {cfg.progressive_until:g} of the epochs"
        if cfg.min_img_size and cfg.min_img_size < (get_preset(cfg.dataset).img_size if cfg.img_size is None
                                                    else cfg.img_size) else "")
    steps = f" (stop at step {cfg.max_steps:,})" if cfg.max_steps else ""
    line1 = (f"{cfg.dataset} | {cfg.model}{args} | recipe {cfg.recipe} | {cfg.epochs} epochs{steps}, batch "
             f"{cfg.batch_size}, augment {cfg.augment or 'basic'}")
    line2 = (f"{cfg.optimizer} lr={cfg.lr:g} wd={cfg.weight_decay:g} | {cfg.schedule}{warm} | "
             f"label smoothing {cfg.label_smoothing:g} | seed {cfg.seed}"
             f"{f' | {cfg.threads} CPU thread(s)' if cfg.threads else ''}{extra}")
    extras = toolbox_summary(cfg)
    return f"{line1}\n{line2}" + (f"\n{extras}" if extras else "")


def toolbox_summary(cfg: RunConfig) -> str:
    """The toolbox options that are on, as one line ('' when none is)."""
    parts = []
    if cfg.mixup or cfg.cutmix:
        parts.append(f"mixup {cfg.mixup:g} cutmix {cfg.cutmix:g} (p {cfg.mix_prob:g}, switch {cfg.mix_switch_prob:g})")
    if cfg.class_weights != "none":
        parts.append(f"class weights {cfg.class_weights}")
    if cfg.sampler != "shuffle":
        parts.append(f"sampler {cfg.sampler}")
    if cfg.accum_steps > 1:
        parts.append(f"accumulate {cfg.accum_steps} batches (effective batch {cfg.accum_steps * cfg.batch_size})")
    if cfg.clip_grad:
        parts.append(f"clip grad norm {cfg.clip_grad:g}")
    return " | ".join(parts)
