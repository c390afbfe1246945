"""``--log-grad-norms``: each residual stage's gradient norm per epoch, for metrics.jsonl and grad_norms.png."""
from __future__ import annotations

import torch
from torch import nn

from .. import checkpoint as ckpt


class GradNormLog:
    """Mean L2 norm of each residual stage's gradient over an epoch, accumulated on the device."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        model = ckpt.unwrap_model(model)
        stages = list(getattr(model, "stages", None) or model.named_children())
        self.names = [name for name, _ in stages]
        self.params = [[p for p in m.parameters() if p.requires_grad] for _, m in stages]
        self.sums = torch.zeros(len(stages), device=device)
        self.steps = 0

    def add(self) -> None:
        norms = [torch.nn.utils.get_total_norm([p.grad for p in ps if p.grad is not None])
                 if any(p.grad is not None for p in ps) else torch.zeros((), device=self.sums.device)
                 for ps in self.params]
        self.sums += torch.stack(norms).to(self.sums)
        self.steps += 1

    def means(self) -> dict[str, float]:
        values = (self.sums / max(self.steps, 1)).tolist()
        return dict(zip(self.names, values))
