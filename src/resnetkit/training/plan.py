"""``resnetkit train --dry-run``: the resolved plan of a run and its training compute, trained nothing.

The plan is the config as the trainer would resolve it, the dataset's sizes, and per epoch the
images trained and their input shape; ``train_flops`` sums 3 x forward FLOPs x images over it
(:mod:`resnetkit.flops`). :func:`epoch_plan` is the one place that says what each epoch trains,
so a schedule that changes the input size per epoch changes the count with it.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from .. import flops
from ..config import RunConfig
from ..data.progressive import epoch_img_sizes
from ..runtime import cpu_threads, resolve_device, resolve_precision
from .budget import Budget, RunBudget, format_duration
from .distributed import check_batch_size
from .finetune import freeze_plan
from .optim import epoch_steps, plan_text, run_steps
from .recipes import describe, resolve_config
from .setup import Run, build_run, probe_choice


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
    run = Run(cfg, device, resolve_precision(cfg.precision, device))  # the trainer's first checks: fp16 needs a GPU
    freeze_plan(cfg)
    with cpu_threads(cfg.threads, device):
        build_run(run)  # the data, the prepared model and the length, as the trainer sets them up
        speed = budget_epochs(run) if cfg.time_budget else None
    cfg, loaders, model, shape, steps_per_epoch = run.cfg, run.loaders, run.model, run.input_shape, run.sched_steps
    images = loaders.train.num_samples
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


def budget_epochs(run: Run) -> float:
    """Fit ``run``'s epochs to --time-budget now, as the trainer's first fit does, from the probe's
    choice for the same network and length; the images/s the fit used."""
    run.choice = probe_choice(run)
    budget = RunBudget(Budget(run.cfg.time_budget))  # the process's age counts, as in a run
    budget.first_fit(run, run.model)
    return budget.fitted_speed


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

