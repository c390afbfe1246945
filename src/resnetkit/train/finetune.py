"""Freezing and unfreezing for fine-tuning: what is frozen when, and the optimizer's param groups.

A fine-tuning run has two parts: the head (``fc``) and the backbone (everything else). While
frozen, a parameter has ``requires_grad=False``, so it gets no gradient and every torch optimizer
skips it: no update, no weight decay, no momentum. Frozen BatchNorm layers also stay in eval mode
(their running statistics and ``num_batches_tracked`` do not move), whoever calls ``train()``.

The plan is stateless in the epoch, so a resumed run freezes exactly as an uninterrupted one:
:func:`set_epoch` puts the model in the state of the given epoch.

- ``--freeze backbone`` | ``stages:N`` (the stem and the first N residual stages) | ``none``;
- ``--freeze-epochs K``: the freeze lasts for epochs 1..K (with ``--freeze none``, K > 0 freezes
  the backbone); K = 0 with a freeze keeps it for the whole run (a linear probe);
- ``--backbone-lr-mult X``: the backbone learns at lr * X (default 0.1), the head at lr.
"""
from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import RunConfig
from ..errors import UserError

HEAD = "fc"  # torchvision's name of the classifier, kept by every resnetkit model
_STAGES = re.compile(r"^stages:(\d+)$")

# Defaults of ``resnetkit finetune`` and ``--recipe finetune``, for small photo datasets.
# AdamW at 1e-3 trains a new head fast without tuning; the backbone at 1e-4 (x0.1) keeps the
# ImageNet features while adapting them (the usual discriminative fine-tuning rates, Howard &
# Ruder 2018, arXiv:1801.06146). Two frozen epochs first let the random head settle so its large
# early gradients do not wreck the pretrained features (Kumar et al. 2022, arXiv:2202.10054).
FINETUNE_RECIPE: dict[str, Any] = {
    "model": "resnet18",
    "pretrained": "imagenet",
    "freeze_epochs": 2,
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,
    "optimizer": "adamw",
    "weight_decay": 0.01,  # decoupled: shrinks weights by lr * 0.01 per step
    "schedule": "cosine",
    "warmup_epochs": None,
    "label_smoothing": 0.1,
    "augment": "basic",
}


@dataclass(frozen=True)
class FreezePlan:
    what: str  # none | backbone | stages:N
    epochs: int | None  # frozen during epochs 1..epochs; None: the whole run
    backbone_lr_mult: float

    def frozen_at(self, epoch: int) -> str:
        """What is frozen during ``epoch`` (1-based): ``none``, ``backbone`` or ``stages:N``."""
        if self.what == "none" or (self.epochs is not None and epoch > self.epochs):
            return "none"
        return self.what


def freeze_plan(cfg: RunConfig) -> FreezePlan:
    """The plan of a config; a bad ``--freeze``/``--freeze-epochs``/``--backbone-lr-mult`` is a UserError."""
    what = (cfg.freeze or "none").strip()
    if what not in ("none", "backbone") and not _STAGES.match(what):
        raise UserError(f"unknown --freeze {cfg.freeze!r}; choose none, backbone or stages:N "
                        f"(the stem and the first N residual stages, e.g. stages:2)")
    k = cfg.freeze_epochs
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise UserError(f"--freeze-epochs must be an integer >= 0, got {k!r}")
    mult = cfg.backbone_lr_mult
    if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult < 0:
        raise UserError(f"--backbone-lr-mult must be a number >= 0, got {mult!r}")
    if what == "none" and k > 0:
        what = "backbone"  # --freeze-epochs alone means: train the head alone first
    return FreezePlan(what, k if k > 0 else None, float(mult))


def is_finetune(cfg: RunConfig) -> bool:
    """Pretrained weights or a freeze: the run gets head and backbone param groups."""
    return bool(cfg.pretrained) or freeze_plan(cfg).what != "none"


# ------------------------------------------------------------------ the parts of a model
def head_module(model: nn.Module) -> nn.Module:
    head = getattr(model, HEAD, None)
    if not isinstance(head, nn.Module):
        raise UserError(f"{type(model).__name__} has no '{HEAD}' head; fine-tuning needs a resnetkit "
                        f"or torchvision ResNet")
    return head


def stage_names(model: nn.Module) -> list[str]:
    """Qualified names of the residual stages, in order (``model.stages``, else ``layerN`` children)."""
    stages = getattr(model, "stages", None)
    if stages:
        names = {id(m): n for n, m in model.named_modules()}
        return [names[id(m)] for _, m in stages]
    return [n for n, _ in model.named_children() if re.fullmatch(r"layer\d+", n)]


def frozen_prefixes(model: nn.Module, what: str) -> list[str]:
    """Module names frozen by ``what``: ``backbone`` is every top-level child but the head;
    ``stages:N`` is the stem (the children before the first stage) and the first N stages."""
    if what == "none":
        return []
    children = [n for n, _ in model.named_children()]
    if what == "backbone":
        return [n for n in children if n != HEAD]
    n = int(_STAGES.match(what).group(1))  # type: ignore[union-attr]
    stages = stage_names(model)
    if n > len(stages):
        raise UserError(f"--freeze {what}: {type(model).__name__} has only {len(stages)} stages "
                        f"({', '.join(stages)}); use stages:0..{len(stages)} or backbone")
    first = stages[0].split(".")[0] if stages else HEAD
    stem = children[:children.index(first)] if first in children else []
    return stem + stages[:n]


def _frozen(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def apply_freeze(model: nn.Module, what: str) -> list[str]:
    """Freeze ``what`` and unfreeze the rest; returns the frozen module names.

    Layers that loading left freshly initialised (``model.fresh_modules``, set by
    :func:`resnetkit.pretrained.load_pretrained`, e.g. the small-input conv1) always train:
    a frozen random layer would feed noise to everything after it."""
    prefixes = frozen_prefixes(model, what)
    fresh = list(getattr(model, "fresh_modules", ()))
    for name, p in model.named_parameters():
        p.requires_grad_(not _frozen(name, prefixes) or _frozen(name, fresh))
    guard_batchnorm(model)
    model.train(model.training)  # re-apply the mode so frozen BatchNorm goes to eval now
    return prefixes


def frozen_state(model: nn.Module) -> bool:
    """Whether any parameter is frozen."""
    return any(not p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------ BatchNorm stays frozen
def _bn_train(self: nn.Module, mode: bool = True) -> nn.Module:
    params = list(self.parameters(recurse=False))
    frozen = bool(params) and not any(p.requires_grad for p in params)
    return nn.Module.train(self, mode and not frozen)


def guard_batchnorm(model: nn.Module) -> None:
    """Make every BatchNorm whose weight and bias are frozen stay in eval mode on ``train()``.

    The check runs at each ``train()`` call, so unfreezing (requires_grad True) is enough to
    put the layer back into training mode; the trainer's ``model.train()`` needs no help.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and "train" not in m.__dict__:
            m.train = types.MethodType(_bn_train, m)  # type: ignore[method-assign]


# ------------------------------------------------------------------ schedule and optimizer
def set_epoch(model: nn.Module, cfg: RunConfig, epoch: int) -> list[str]:
    """Put ``model`` in the freeze state of ``epoch`` (1-based); lines to log when it changes."""
    if not is_finetune(cfg):
        return []
    plan = freeze_plan(cfg)
    what = plan.frozen_at(epoch)
    was_frozen = frozen_state(model)
    apply_freeze(model, what)
    if was_frozen and what == "none":
        return [f"epoch {epoch}: unfreezing the backbone; it trains at lr x {plan.backbone_lr_mult:g}"]
    return []


def param_groups(model: nn.Module, cfg: RunConfig) -> list[dict[str, Any]]:
    """Optimizer param groups. Fine-tuning: head and backbone (backbone lr = lr * mult), each split
    into decayed weights and undecayed BatchNorm/bias parameters, as :func:`optim.param_groups`
    does; frozen parameters are included (they unfreeze later) and skipped while gradient-free.
    Otherwise the trainer's usual groups. Groups carry a ``name`` for logs and tests."""
    from .optim import param_groups as plain_groups

    if not is_finetune(cfg):
        return plain_groups(model, cfg.weight_decay)
    mult = freeze_plan(cfg).backbone_lr_mult
    head = {id(p) for p in head_module(model).parameters()}
    buckets: dict[str, list[nn.Parameter]] = {"head": [], "head.no_decay": [], "backbone": [],
                                              "backbone.no_decay": []}
    for p in model.parameters():
        part = "head" if id(p) in head else "backbone"
        buckets[part if p.ndim > 1 else part + ".no_decay"].append(p)
    return [{"name": name, "params": params, "lr": cfg.lr * (1.0 if name.startswith("head") else mult),
             "weight_decay": 0.0 if name.endswith("no_decay") else cfg.weight_decay}
            for name, params in buckets.items() if params]


def describe_plan(cfg: RunConfig) -> list[str]:
    """The freeze schedule of a resolved config in words."""
    plan = freeze_plan(cfg)
    lr, mult = cfg.lr, plan.backbone_lr_mult
    epochs = cfg.epochs
    what = "the backbone" if plan.what == "backbone" else f"the stem and the first {plan.what[7:]} stages"
    if plan.what == "none":
        return [f"all layers train from epoch 1: head lr {lr:g}, backbone lr {lr * mult:g} (x{mult:g})"]
    if plan.epochs is None or (epochs is not None and plan.epochs >= epochs):
        why = "" if plan.epochs is None else f" (--freeze-epochs {plan.epochs} >= --epochs {epochs})"
        return [f"{what} frozen for the whole run{why}, BatchNorm statistics too; the rest trains, "
                f"head lr {lr:g}" + ("" if plan.what == "backbone" else f", backbone lr {lr * mult:g}")]
    end = f"-{epochs}" if epochs else "+"
    return [f"epochs 1-{plan.epochs}: {what} frozen (BatchNorm statistics too), head lr {lr:g}",
            f"epochs {plan.epochs + 1}{end}: all layers train, backbone lr {lr * mult:g} (lr x {mult:g})"]


def freeze_timeline(cfg: RunConfig, model: nn.Module) -> list[dict[str, Any]]:
    """What was frozen when, as planned: ``[{"first", "last", "what", "frozen", "lr"}]`` spans of
    epochs (1-based, inclusive) with the frozen module names; empty when nothing was fine-tuned."""
    if not is_finetune(cfg) or not cfg.epochs:
        return []
    plan = freeze_plan(cfg)
    spans: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        what = plan.frozen_at(epoch)
        if spans and spans[-1]["what"] == what:
            spans[-1]["last"] = epoch
            continue
        backbone = "frozen" if what == "backbone" else f"{cfg.lr * plan.backbone_lr_mult:g}"
        spans.append({"first": epoch, "last": epoch, "what": what, "frozen": frozen_prefixes(model, what),
                      "lr": f"head {cfg.lr:g}, backbone {backbone}"})
    return spans
