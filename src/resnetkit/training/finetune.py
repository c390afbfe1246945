"""Freezing and unfreezing for fine-tuning: what is frozen when, and the optimizer's param groups.

A fine-tuning run has two parts: the head (``fc``) and the backbone (everything else). While
frozen, a parameter has ``requires_grad=False``, so it gets no gradient and every torch optimizer
skips it: no update, no weight decay, no momentum. Frozen BatchNorm layers also stay in eval mode
(their running statistics and ``num_batches_tracked`` do not move), whoever calls ``train()``: the
models' ``train`` sees to it (:mod:`resnetkit.models.resnet`).

The plan is stateless in the epoch, so a resumed run freezes exactly as an uninterrupted one:
:func:`set_epoch` puts the model in the state of the given epoch.

- ``--freeze backbone`` | ``stages:N`` (the stem and the first N residual stages) | ``none``;
- ``--freeze-epochs K``: the freeze lasts for epochs 1..K (with ``--freeze none``, K > 0 freezes
  the backbone); K = 0 with a freeze keeps it for the whole run (a linear probe);
- ``--backbone-lr-mult X``: the backbone learns at lr * X (default 0.1), the head at lr.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from .. import pretrained
from ..config import RunConfig
from ..data import dataset_spec
from ..errors import UserError
from ..models import head_name
from ..specs import DatasetSpec
from .recipes import resolve_config
_STAGES = re.compile(r"^stages:(\d+)$")

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
    head = getattr(model, head_name(model), None)
    if not isinstance(head, nn.Module):
        raise UserError(f"{type(model).__name__} has no '{head_name(model)}' head; fine-tuning needs a "
                        f"resnetkit or torchvision ResNet")
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
    ``stages:N`` is the stem (the children before the first stage) and the first N stages, with
    whatever runs between them (DenseNet's transitions, inside its ``features``)."""
    if what == "none":
        return []
    children = [n for n, _ in model.named_children()]
    if what == "backbone":
        return [n for n in children if n != head_name(model)]
    n = int(_STAGES.match(what).group(1))  # type: ignore[union-attr]
    stages = stage_names(model)
    if n > len(stages):
        raise UserError(f"--freeze {what}: {type(model).__name__} has only {len(stages)} stages "
                        f"({', '.join(stages)}); use stages:0..{len(stages)} or backbone")
    if not stages:
        head = head_name(model)
        return children[:children.index(head)] if head in children else []
    parent, _, leaf = stages[max(n - 1, 0)].rpartition(".")
    siblings = [c for c, _ in model.get_submodule(parent).named_children()]
    end = siblings.index(leaf) + (1 if n else 0)
    return [f"{parent}.{c}" if parent else c for c in siblings[:end]]


def _frozen(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def apply_freeze(model: nn.Module, what: str, fresh: Sequence[str] = ()) -> list[str]:
    """Freeze ``what`` and unfreeze the rest; returns the frozen module names.

    ``fresh``: layers that loading left freshly initialised (:class:`resnetkit.pretrained.Loaded`,
    e.g. the small-input conv1); they always train: a frozen random layer would feed noise to
    everything after it."""
    prefixes = frozen_prefixes(model, what)
    fresh = list(fresh)
    for name, p in model.named_parameters():
        p.requires_grad_(not _frozen(name, prefixes) or _frozen(name, fresh))
    model.train(model.training)  # re-apply the mode so frozen BatchNorm goes to eval now
    return prefixes


def frozen_state(model: nn.Module) -> bool:
    """Whether any parameter is frozen."""
    return any(not p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------ the schedule
def set_epoch(model: nn.Module, cfg: RunConfig, epoch: int, fresh: Sequence[str] = ()) -> list[str]:
    """Put ``model`` in the freeze state of ``epoch`` (1-based); lines to log when it changes.
    ``fresh``: the freshly initialised layers, which always train (:func:`apply_freeze`)."""
    if not is_finetune(cfg):
        return []
    plan = freeze_plan(cfg)
    what = plan.frozen_at(epoch)
    was_frozen = frozen_state(model)
    apply_freeze(model, what, fresh)
    if was_frozen and what == "none":
        return [f"epoch {epoch}: unfreezing the backbone; it trains at lr x {plan.backbone_lr_mult:g}"]
    return []


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


# ------------------------------------------------------------------ the trainer's hook
@dataclass(frozen=True)
class Prepared:
    notes: list[str]  # what was loaded, adapted, and the freeze schedule: printed and kept in the run
    fresh_modules: list[str]  # freshly initialised layers, trained even while frozen


def prepare(model: nn.Module, cfg: RunConfig, spec: DatasetSpec | None = None) -> Prepared:
    """Load ``cfg.pretrained`` into ``model`` and freeze it for epoch 1."""
    notes: list[str] = []
    fresh: list[str] = []
    if cfg.pretrained:
        loaded = pretrained.load_pretrained(model, cfg.pretrained, arch=cfg.model,
                                            classes=spec.classes if spec is not None else None)
        notes += loaded.notes
        fresh = loaded.fresh_modules
        if spec is not None:
            notes.append(pretrained.describe_spec(spec))
    if is_finetune(cfg):
        set_epoch(model, cfg, 1, fresh)
        notes += describe_plan(cfg)
        plan = freeze_plan(cfg)
        if fresh and plan.what != "none":
            notes.append(f"{', '.join(fresh)}: freshly initialised, so trained even while frozen")
        if plan.what != "none" and not cfg.pretrained:
            notes.append("warning: --freeze without --pretrained freezes randomly initialised layers")
    return Prepared(notes, fresh)


def plan_lines(values: dict[str, Any]) -> list[str]:
    """The resolved plan of ``resnetkit finetune``, printed before any image is decoded."""
    cfg = resolve_config(RunConfig.from_dict(values), set(values))
    freeze_plan(cfg)  # a bad --freeze fails here, not after the data is read
    spec = dataset_spec(cfg)  # a missing DATA_DIR first: the weights would not help
    source = pretrained.check_source(cfg.pretrained, cfg.model) if cfg.pretrained else None
    origin = f"from {source.label}" if source else "from scratch (no --pretrained)"
    # The preprocessing and the freeze schedule follow from the trainer, once the weights are in.
    return [f"fine-tune plan: {cfg.model} {origin}",
            f"  data: {cfg.data_dir}, {spec.num_classes} classes; {cfg.epochs} epochs, "
            f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g} wd {cfg.weight_decay:g}, {cfg.schedule}"]


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
