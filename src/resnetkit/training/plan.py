"""``resnetkit train --dry-run``: the resolved plan of a run and its training compute, trained nothing.

The plan is the config as the trainer would resolve it, the dataset's sizes, and per epoch the
images trained and their input shape; ``train_flops`` sums 3 x forward FLOPs x images over it
(:mod:`resnetkit.flops`). :func:`epoch_plan` is the one place that says what each epoch trains,
so a schedule that changes the input size per epoch changes the count with it.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from .. import flops, pretrained, probe
from ..config import RunConfig
from ..errors import UserError
from ..data import build_loaders, tta_for
from ..data.progressive import epoch_img_sizes
from ..models import create_model
from ..runtime import cpu_threads, resolve_device, resolve_precision
from .budget import TAIL_MIN_S, Budget, SizeSpeeds, budget_costs, budget_speed, format_duration
from .distributed import check_batch_size
from .finetune import freeze_plan
from .optim import epoch_steps, plan_text, run_steps, with_length
from .recipes import describe, resolve_config
from ..steps import timing_step
from .trainer import check_setup


def epoch_plan(cfg: RunConfig, images: int, input_shape: tuple[int, int, int],
               steps_per_epoch: int | None = None) -> list[flops.EpochPlan]:
    """(images, input shape) of each epoch of ``cfg``: every epoch trains the whole training
    split, at the dataset's input size or, with --min-img-size, at that epoch's smaller size
    (the trainer's own rule, :func:`resnetkit.data.progressive.epoch_img_sizes`); given its
    ``steps_per_epoch``, a last epoch that --max-steps ends early trains only its steps' batches."""
    chans, full = input_shape[0], input_shape[-1]
    sizes = epoch_img_sizes(cfg.epochs, full, cfg.min_img_size, cfg.progressive_until)
    trained = [images] * len(sizes)
    if steps_per_epoch and sizes:
        steps = epoch_steps(cfg, len(sizes), steps_per_epoch)
        if steps < steps_per_epoch:
            trained[-1] = min(images, steps * cfg.accum_steps * cfg.batch_size)
    return [(n, (chans, size, size)) for n, size in zip(trained, sizes)]


def dry_run(cfg: RunConfig, explicit: Iterable[str] | None = None) -> dict[str, Any]:
    """The plan of ``train(cfg)``: resolved config, dataset sizes, epochs and training FLOPs.
    With --time-budget the epochs are fitted from the speed probe (cached, or timed now)."""
    cfg = resolve_config(cfg, explicit)
    device = resolve_device(cfg.device)
    check_batch_size(cfg.batch_size, cfg.nproc)  # the launcher's check
    resolve_precision(cfg.precision, device)  # the trainer's first checks: fp16 needs a GPU
    freeze_plan(cfg)
    with cpu_threads(cfg.threads, device):
        # the data as the trainer reads it: with pretrained weights, at their preprocessing
        weights = pretrained.weights_preprocessing(cfg) if cfg.pretrained else None
        loaders = build_loaders(cfg, device, preprocessing=weights)
        spec = loaders.spec
        head = {} if cfg.drop_rate is None else {"drop_rate": cfg.drop_rate}  # as the trainer's
        model = create_model(cfg.model, num_classes=spec.num_classes, in_chans=spec.in_chans,
                             **{**head, **cfg.model_args}).to(device)
        check_setup(cfg, loaders)
        shape = (spec.in_chans, spec.img_size, spec.img_size)
        images = loaders.train.num_samples
        steps_per_epoch = math.ceil(len(loaders.train) / cfg.accum_steps)
        speed = None
        if cfg.max_steps:
            cfg = with_length(cfg, min(cfg.epochs, cfg.max_steps / steps_per_epoch), steps_per_epoch)
        if cfg.time_budget:
            cfg, speed = budget_epochs(cfg, model, loaders, shape, device, steps_per_epoch)
    plan = epoch_plan(cfg, images, shape, steps_per_epoch)
    forward = flops.forward_flops(model, shape)
    total = flops.train_flops(model, plan)
    return {"config": cfg.to_dict(), "dataset": {k: loaders.info[k] for k in ("dataset", "train_size",
                                                                              "test_size")},
            "images_per_epoch": images, "epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch,
            "steps": run_steps(cfg, steps_per_epoch),
            "time_budget_images_per_s": speed,
            "model": {"name": cfg.model, "params": sum(p.numel() for p in model.parameters()),
                      "forward_flops_per_image": forward},
            "plan": [{"epoch": i, "images": n, "input_shape": list(s)} for i, (n, s) in enumerate(plan, 1)],
            "train_flops": total}


def budget_epochs(cfg: RunConfig, model: torch.nn.Module, loaders: Any, shape: tuple[int, int, int],
                  device: torch.device, steps_per_epoch: int) -> tuple[RunConfig, float]:
    """The epochs --time-budget would fit now, from the probe's speed (as the trainer's first fit)."""
    model_args = {"num_classes": loaders.spec.num_classes, "in_chans": loaders.spec.in_chans,
                  **cfg.model_args}
    choice = probe.choose(model, shape, loaders.train.batch_size, device, precision=cfg.precision,
                          channels_last=cfg.channels_last, compile=cfg.compile,
                          network=probe.network_key(cfg, model_args), make_step=timing_step,
                          run_steps=cfg.epochs * len(loaders.train), threads=cfg.threads,
                          reprobe=cfg.reprobe)
    speed = budget_speed(choice, model, shape, loaders.train.batch_size, device, cfg.compile)

    def fit(images_per_s: float, measured: str = "") -> float:
        speeds = SizeSpeeds(loaders.spec.img_size)  # the probe's, at full size: as the trainer's first fit
        speeds.record(loaders.spec.img_size, images_per_s)
        costs = budget_costs(cfg, loaders, tta_for(cfg.dataset, loaders.spec), speeds, TAIL_MIN_S)
        return Budget(cfg.time_budget).first_fit(costs, cfg.eval_every, steps_per_epoch, measured=measured)
    try:
        epochs = fit(speed)
    except UserError:  # as the trainer: never refused on a probe made under load without timing again
        if not (choice.load or (choice.spread or 0) >= probe.STABLE_SPREAD):
            raise
        again = probe.Choice(choice.precision, choice.channels_last, choice.compile, "cache",
                             choice.images_per_s, threads=choice.threads)
        speed = budget_speed(again, model, shape, loaders.train.batch_size, device, False)
        epochs = fit(speed, f"measured twice, now at ~{speed:,.0f} img/s")
    return with_length(cfg, epochs, steps_per_epoch), speed


def format_plan(plan: Mapping[str, Any]) -> str:
    """The plan as a few lines for a terminal."""
    cfg = RunConfig.from_dict(plan["config"])
    data, model = plan["dataset"], plan["model"]
    lines = [describe(cfg),
             f"data: {data['train_size']:,} training and {data['test_size']:,} test images; "
             f"{plan['images_per_epoch']:,} trained per epoch",
             f"model: {model['params']:,} parameters, {model['forward_flops_per_image'] / 1e6:,.1f} MFLOP "
             f"per image forward"]
    length = plan_text(cfg.epochs, plan["steps"], plan["steps_per_epoch"])
    if cfg.time_budget:
        lines.append(f"budget {format_duration(cfg.time_budget)} -> {length} at "
                     f"~{plan['time_budget_images_per_s']:,.0f} img/s")
    lines.append(f"train_flops: {plan['train_flops']:,} ({plan['train_flops'] / 1e12:.2f} TFLOP = 3 x "
                 f"forward FLOPs x images, over {length}); nothing trained (--dry-run)")
    return "\n".join(lines)

