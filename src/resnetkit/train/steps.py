"""One optimisation step and one evaluation step, apart from the loop that calls them.

Nothing here reads a tensor back to the host: losses and counts stay on the device so that a
step never waits for the accelerator (the trainer syncs a few times per epoch at most).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
from torch import nn

from ..runtime import Precision

Batch = tuple[torch.Tensor, torch.Tensor]


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, autocast: ContextManager[object],
               scaler: torch.amp.GradScaler | None = None,
               before_update: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, update. Returns (mean loss, number correct) as device tensors.

    ``before_update`` runs once the gradients are final and unscaled (gradient-norm logging).
    """
    with autocast:
        logits = model(x)
    loss = loss_fn(logits.float(), y)  # the loss in fp32 whatever the autocast dtype
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if before_update is not None:
            before_update()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if before_update is not None:
            before_update()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


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
              tta: bool = False) -> torch.Tensor:
    """fp32 logits of a batch; with ``tta`` the mean of the logits of x and its horizontal flip."""
    with autocast:
        logits = model(x).float()
        if tta:
            logits = (logits + model(x.flip(-1)).float()) / 2
    return logits


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
                     channels_last: bool = False, tta: bool = False,
                     label_smoothing: float = 0.0) -> EvalOutput:
    """Run ``eval_step`` over every batch. The loss is the training criterion (cross-entropy
    with the run's label smoothing), so train and test losses can be compared."""
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
        count += y.shape[0]
    model.train(was_training)
    if loss_sum is None:
        empty = torch.zeros(0, dtype=torch.long)
        return EvalOutput(torch.zeros(()), 0, empty.view(0, 1), empty)
    return EvalOutput(loss_sum, count, torch.cat(top5), torch.cat(targets))
