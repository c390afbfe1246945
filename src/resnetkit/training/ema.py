"""Exponential moving average of the weights (``--ema DECAY``).

The average is a ``torch.optim.swa_utils.AveragedModel`` with ``use_buffers=True``: BatchNorm's
running statistics are averaged with the parameters, as torch's documentation does for EMA, so
the averaged model is evaluated as it is, with no extra pass over the data. The decay warms up
as in timm's ``ModelEmaV3``: update k (from 1) uses ``min(decay, 1 - k ** -3/4)``, so the first
update copies the weights and early averages do not drag the random initialisation along
(power 3/4 is timm's advice for runs of thousands of steps: 0.99 after ~460 updates, 0.999
after 10,000). The trainer evaluates and saves the average; its resume state keeps the raw
weights and this module's state apart.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

WARMUP_POWER = 3 / 4  # timm ModelEmaV3(warmup_power): 3/4 for runs of under ~100k steps


def warmup_decay(decay: float, update: int) -> float:
    """The decay of the ``update``-th update (1-based): 0 at the first, rising to ``decay``."""
    return min(decay, 1.0 - max(update, 1) ** -WARMUP_POWER)


class WeightEma:
    """The EMA of ``model``'s parameters and buffers; ``update(model)`` after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self._now = 0.0  # the decay of the update in progress
        # pass the plain module: AveragedModel deep-copies what it is given, DDP or compile wrappers too
        self.averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=True)

    @property
    def module(self) -> nn.Module:
        """The averaged network: what is evaluated and saved."""
        return self.averaged.module

    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _: Any) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - self._now)
        else:  # integer buffers (BatchNorm's num_batches_tracked) are counts, not averaged
            for a, c in zip(averaged, current):
                a.copy_(c)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        self._now = warmup_decay(self.decay, self.updates)
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.averaged.load_state_dict(state["averaged"])

