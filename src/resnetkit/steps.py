"""One optimisation step and one evaluation step, apart from the loop that calls them.

Nothing here reads a tensor back to the host: losses and counts stay on the device so that a
step never waits for the accelerator (the trainer syncs a few times per epoch at most).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Iterator

import torch
from torch import nn

from .data.augment import TTA
from .runtime import Precision

Batch = tuple[torch.Tensor, torch.Tensor]


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, autocast: ContextManager[object],
               scaler: torch.amp.GradScaler | None = None,
               before_update: Callable[[], None] | None = None, clip_grad: float | None = None,
               loss_scale: float = 1.0, zero_grad: bool = True,
               update: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, update. Returns (mean loss, number correct) as device tensors.

    ``y``: class indices, or soft targets (N, classes) from mixup/cutmix, where a prediction is
    correct when it is the dominant label. ``before_update`` runs once the gradients are final
    and unscaled (gradient-norm logging), before ``clip_grad`` clips their global L2 norm.
    Gradient accumulation: ``zero_grad`` on a group's first micro-batch, ``update`` on its last,
    and ``loss_scale`` = the micro-batch's share of the group's samples, so the summed gradient
    is the mean over the group, as one batch of its size would give.
    """
    with autocast:
        logits = model(x)
    loss = loss_fn(logits.float(), y)  # the loss in fp32 whatever the autocast dtype
    if zero_grad:
        optimizer.zero_grad(set_to_none=True)
    scaled = loss * loss_scale if loss_scale != 1.0 else loss
    (scaled if scaler is None else scaler.scale(scaled)).backward()
    if update:
        apply_update(model, optimizer, scaler, clip_grad, before_update)
    labels = y.argmax(1) if y.ndim > 1 else y
    return loss.detach(), (logits.detach().argmax(1) == labels).sum()


def apply_update(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                 clip_grad: float | None, before_update: Callable[[], None] | None) -> None:
    """Unscale (fp16), observe, clip, step: clipping must see the true gradient, so it follows
    ``unscale_`` (torch.amp docs, "Gradient clipping"); an fp16 step with inf/NaN is skipped."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if before_update is not None:
        before_update()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def micro_batches(batches: Iterable[Batch], accum_steps: int
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float, bool, bool]]:
    """(x, y, share, first, last) per batch, in groups of ``accum_steps`` (the epoch's last
    group may be shorter); ``share``: the batch's fraction of its group's samples."""
    group: list[Batch] = []
    for batch in batches:
        group.append(batch)
        if len(group) == accum_steps:
            yield from _group(group)
            group = []
    yield from _group(group)


def _group(group: list[Batch]) -> Iterator[tuple[torch.Tensor, torch.Tensor, float, bool, bool]]:
    total = sum(int(y.shape[0]) for _, y in group)
    for i, (x, y) in enumerate(group):
        yield x, y, int(y.shape[0]) / total, i == 0, i == len(group) - 1


def sync_context(model: nn.Module, sync: bool) -> ContextManager[object]:
    """DDP's ``no_sync`` for the micro-batches before a group's last: their gradients are only
    all-reduced once, with the last backward (torch DDP docs, ``no_sync``)."""
    no_sync = getattr(model, "no_sync", None)
    return contextlib.nullcontext() if sync or no_sync is None else no_sync()


def timing_step(model: nn.Module, mode: str, precision: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One train_step (or an inference forward, ``mode="infer"``) of ``model`` on (x, y) under
    ``precision``: what the speed probe and ``resnetkit bench`` time. Nothing is read back."""
    device_type = next(model.parameters()).device.type
    prec = Precision(precision, device_type)
    autocast = prec.autocast()
    if mode == "infer":
        model.eval()

        def infer(x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.inference_mode(), autocast:
                model(x)
        return infer
    model.train()
    # lr is irrelevant to speed; momentum keeps the optimizer's state and work realistic
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    loss_fn, scaler = nn.CrossEntropyLoss(), prec.grad_scaler()

    def train(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(model, x, y, loss_fn=loss_fn, optimizer=optimizer, autocast=autocast, scaler=scaler)
    return train


@torch.no_grad()
def eval_step(model: nn.Module, x: torch.Tensor, *, autocast: ContextManager[object],
              tta: TTA | None = None) -> torch.Tensor:
    """fp32 logits of a batch; with ``tta`` the mean of the logits of its views (flipped,
    shifted by a pixel: ``data.augment.TTA``)."""
    with autocast:
        if tta is None:
            return model(x).float()
        return torch.stack([model(v).float() for v in tta.views(x)]).mean(0)


@dataclass
class EvalOutput:
    """A pass over a split: summed loss and per-sample predictions, all on the device."""

    loss_sum: torch.Tensor
    count: int
    top5: torch.Tensor  # (N, min(5, classes)) predicted class indices, best first
    targets: torch.Tensor  # (N,)

    @property
    def preds(self) -> torch.Tensor:
        return self.top5[:, 0]

    def correct(self) -> torch.Tensor:
        return (self.preds == self.targets).sum()

    def summary(self) -> dict[str, float]:
        """Loss and top-1 accuracy as Python floats (one host sync)."""
        if self.count == 0:
            return {"loss": float("nan"), "acc": float("nan")}
        loss, correct = torch.stack([self.loss_sum.float(), self.correct().float()]).tolist()
        return {"loss": loss / self.count, "acc": correct / self.count}


def evaluate_batches(model: nn.Module, batches: Iterable[Batch], *, autocast: ContextManager[object],
                     channels_last: bool = False, tta: TTA | None = None,
                     label_smoothing: float = 0.0,
                     on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
                     ) -> EvalOutput:
    """Run ``eval_step`` over every batch. The loss is the training criterion (cross-entropy
    with the run's label smoothing), so train and test losses can be compared. ``on_batch(x,
    logits, y)`` sees each batch (the run report's per-sample view, without a second pass)."""
    was_training = model.training
    model.eval()
    loss_sum, count, top5, targets = None, 0, [], []
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = eval_step(model, x, autocast=autocast, tta=tta)
        batch_loss = nn.functional.cross_entropy(logits, y, reduction="sum",
                                                 label_smoothing=label_smoothing)
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        top5.append(logits.topk(min(5, logits.shape[1]), dim=1).indices)
        targets.append(y)
        if on_batch is not None:
            on_batch(x, logits, y)
        count += y.shape[0]
    model.train(was_training)
    if loss_sum is None:
        empty = torch.zeros(0, dtype=torch.long)
        return EvalOutput(torch.zeros(()), 0, empty.view(0, 1), empty)
    return EvalOutput(loss_sum, count, torch.cat(top5), torch.cat(targets))
