"""Heads and feature maps with timm's conventions, shared by every family.

Each net is a :class:`Backbone`: a stem, residual (or dense) stages, an optional final norm,
then global pooling, dropout and a linear classifier. The options every registered model takes:

- ``num_classes=0``: no classifier; the model returns pooled features (Keras' ``include_top=False``
  followed by ``pooling="avg"``);
- ``global_pool``: ``"avg"`` (default), ``"max"``, or ``""`` for the last feature map itself
  (with ``num_classes=0``);
- ``drop_rate``: dropout on the pooled features, before the classifier;
- ``features_only=True``: ``forward`` returns the list of stage outputs and the model has no
  head; ``model.feature_info`` gives each one's channels and reduction (input size / map size).

And the methods: ``forward_features(x)`` (the last feature map, before pooling),
``forward_head(x, pre_logits=False)``, ``get_classifier()`` and ``reset_classifier(n)``.
"""
from __future__ import annotations

import sys
from typing import Any, Literal, Mapping, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ._ops import GlobalAvgPool

if sys.version_info >= (3, 11):
    from typing import Unpack  # noqa: F401 - re-exported for the families' builders
else:  # pragma: no cover
    from typing_extensions import Unpack  # noqa: F401

PoolType = Literal["avg", "max", ""]
POOLS = ("avg", "max", "")


class HeadOptions(TypedDict, total=False):
    """What every registered builder takes besides ``num_classes`` and ``in_chans``."""

    global_pool: Literal["avg", "max", ""]
    drop_rate: float
    features_only: bool


class FeatureInfo(list):
    """One dict per stage output, ``{"module", "num_chs", "reduction"}``, as timm's FeatureInfo."""

    def channels(self) -> list[int]:
        return [int(f["num_chs"]) for f in self]

    def reduction(self) -> list[int]:
        return [int(f["reduction"]) for f in self]

    def module_name(self) -> list[str]:
        return [str(f["module"]) for f in self]


def head_name(model: nn.Module) -> str:
    """The classifier's attribute: ``fc`` (torchvision's), or the model's ``head_name``
    (DenseNet: ``classifier``)."""
    return str(getattr(model, "head_name", "fc"))


def make_pool(pool_type: str) -> nn.Module:
    """The global pooling for ``global_pool``; "" keeps the map (``nn.Identity``)."""
    if pool_type not in POOLS:
        raise UserError(f"global_pool must be 'avg', 'max' or '' (no pooling), got {pool_type!r}")
    if pool_type == "avg":
        return GlobalAvgPool()
    return nn.AdaptiveMaxPool2d((1, 1)) if pool_type == "max" else nn.Identity()


class Backbone(nn.Module):
    """The head and feature API of every resnetkit net. A family writes its data path up to the
    pooling in :meth:`forward_features`, in straight lines, and calls :meth:`init_head`;
    ``forward`` is ``forward_head(forward_features(x))``. For ``features_only`` it supplies
    ``forward_stem`` and its ``layerN`` stages (or overrides :meth:`forward_stages`).

    ``head_name`` and ``first_conv`` name the classifier and the input convolution, as timm's
    ``pretrained_cfg`` does, so that loading pretrained weights knows what to adapt."""

    head_name: str = "fc"  # torchvision's name of the classifier
    head_bias: bool = True
    first_conv: str = "conv1"

    num_features: int
    num_classes: int
    drop_rate: float
    features_only: bool
    pool_type: str
    feature_info: FeatureInfo

    @property
    def stages(self) -> list[tuple[str, nn.Module]]:
        """The stages ``[("layer1", module), ...]``, e.g. for per-stage grad norms and freezing."""
        return [(name, m) for name, m in self.named_children() if name.startswith("layer")]

    def train(self, mode: bool = True) -> "Backbone":
        """As ``nn.Module.train``, except that a BatchNorm whose weight and bias are frozen
        (``requires_grad`` False, as fine-tuning leaves them) stays in eval mode: updating its
        running statistics under frozen affine parameters would shift every later layer's input.
        Unfreezing (``requires_grad`` True) is enough to put it back into training mode."""
        super().train(mode)
        if mode:
            for m in self.modules():
                params = list(m.parameters(recurse=False))
                if (isinstance(m, nn.modules.batchnorm._BatchNorm) and params
                        and not any(p.requires_grad for p in params)):
                    m.training = False
        return self

    # ------------------------------------------------------------------ building
    def init_head(self, num_features: int, num_classes: int, *, global_pool: str = "avg",
                  drop_rate: float = 0.0, features_only: bool = False) -> None:
        """Global pooling (registered as ``avgpool``, torchvision's name, whatever the pooling)
        and the classifier, after the stages so that the module order is the data's."""
        if not isinstance(drop_rate, (int, float)) or isinstance(drop_rate, bool) or not 0 <= drop_rate < 1:
            raise UserError(f"drop_rate must be a number in [0, 1), e.g. 0.2, got {drop_rate!r}")
        if num_classes < 0:
            raise UserError(f"num_classes must be 0 (no classifier) or more, got {num_classes}")
        self.num_features, self.drop_rate = int(num_features), float(drop_rate)
        self.features_only = bool(features_only)
        self.avgpool = make_pool(global_pool)
        self.pool_type = global_pool
        self._set_classifier(0 if features_only else num_classes)

    def _set_classifier(self, num_classes: int) -> None:
        if num_classes and not self.pool_type:
            raise UserError("global_pool='' returns the last feature map and has no classifier: "
                            "use it with num_classes=0")
        self.num_classes = int(num_classes)
        head = nn.Linear(self.num_features, num_classes, bias=self.head_bias) if num_classes else nn.Identity()
        setattr(self, self.head_name, head)

    def add_feature(self, module: str, num_chs: int, reduction: int) -> None:
        """Record a stage output for ``features_only`` (in order, as the stages are built)."""
        if "feature_info" not in self.__dict__:
            self.feature_info = FeatureInfo()
        self.feature_info.append({"module": module, "num_chs": int(num_chs), "reduction": int(reduction)})

    # ------------------------------------------------------------------ the head API
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised classifier for ``num_classes`` (0: none), as timm's."""
        if global_pool is not None:
            self.avgpool, self.pool_type = make_pool(global_pool), global_pool
        device = next(self.parameters()).device
        self._set_classifier(num_classes)
        self.get_classifier().to(device)

    # ------------------------------------------------------------------ forward
    def forward_stem(self, x: Tensor) -> Tensor:
        """What runs before the first stage (the family's)."""
        raise NotImplementedError

    def forward_final(self, x: Tensor) -> Tensor:
        """What follows the last stage before pooling: nothing here; the final BN-ReLU of the
        pre-activation nets and DenseNet."""
        return x

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The output of every stage for ``features_only``, the last one through :meth:`forward_final`."""
        x = self.forward_stem(x)
        outs = []
        for _, stage in self.stages:
            x = stage(x)
            outs.append(x)
        outs[-1] = self.forward_final(outs[-1])
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, (N, num_features, H/32, W/32) for the ImageNet nets; a family
        with a fixed number of stages spells its own out."""
        return self.forward_stages(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, flatten, dropout, classify; ``pre_logits`` stops before the classifier."""
        x = self.avgpool(x)
        if self.pool_type:
            x = torch.flatten(x, 1)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: Tensor) -> Any:
        if self.features_only:
            return self.forward_stages(x)
        x = self.forward_features(x)
        return self.forward_head(x)

    # ------------------------------------------------------------------ pretrained weights
    def filter_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Keys of older checkpoints renamed to this model's (timm's ``checkpoint_filter_fn``);
        nothing to rename here."""
        return dict(state_dict)


__all__ = ["Backbone", "FeatureInfo", "HeadOptions", "POOLS", "PoolType", "head_name", "make_pool"]
