"""train_step's accumulation and clipping: the same update as one big batch, the clipped norm."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from resnetkit.steps import micro_batches, train_step


def no_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3))


def run(model: nn.Module, batches, accum: int, **kw) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    for x, y, share, first, last in micro_batches(batches, accum):
        train_step(model, x, y, loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1), optimizer=opt,
                   autocast=contextlib.nullcontext(), loss_scale=share, zero_grad=first, update=last, **kw)


def test_accumulating_two_batches_equals_one_batch_of_both() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3 * 14, 1, 6, 6, generator=g), torch.randint(0, 3, (3 * 14,), generator=g)
    big = [(x[i:i + 14], y[i:i + 14]) for i in range(0, 42, 14)]
    # 14 = 8 + 6: unequal halves, so each micro-batch must be weighted by its share of samples
    small = [(bx[s], by[s]) for bx, by in big for s in (slice(0, 8), slice(8, 14))]
    a, b = no_bn_net(), no_bn_net()
    run(a, big, accum=1)
    run(b, small, accum=2)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    c = no_bn_net()
    run(c, small, accum=1)  # without accumulation: six smaller steps, a different result
    assert not torch.allclose(next(a.parameters()), next(c.parameters()), atol=1e-4)


def test_accumulation_matches_batch_times_two_with_eval_mode_batchnorm() -> None:
    from resnetkit.models import create_model

    torch.manual_seed(0)
    a = create_model("resnet8", num_classes=3, in_chans=1).eval()  # BN uses running statistics
    b = copy.deepcopy(a)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    run(a, [(x, y)], accum=1)
    run(b, [(x[:8], y[:8]), (x[8:], y[8:])], accum=2)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_micro_batches_groups_and_shares() -> None:
    batches = [(torch.zeros(n), torch.zeros(n)) for n in (4, 4, 4, 4, 2)]
    got = [(share, first, last) for _, _, share, first, last in micro_batches(batches, 2)]
    assert got == [(0.5, True, False), (0.5, False, True), (0.5, True, False), (0.5, False, True),
                   (1.0, True, True)]  # the epoch's last group is the short one


@pytest.mark.parametrize("scaled", [False, True])
def test_clip_grad_limits_the_update_to_the_norm(scaled: bool) -> None:
    model = no_bn_net()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # update = -grad, so |update| = |grad|
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else None
    x, y = torch.randn(8, 1, 6, 6) * 50, torch.randint(0, 3, (8,))
    seen = []
    norm = lambda: torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])  # noqa: E731
    train_step(model, x, y, loss_fn=nn.CrossEntropyLoss(), optimizer=opt, autocast=contextlib.nullcontext(),
               scaler=scaler, clip_grad=0.01, before_update=lambda: seen.append(float(norm())))
    step = torch.cat([(p.detach() - q).flatten() for p, q in zip(model.parameters(), before)])
    assert seen[0] > 0.01  # the unscaled gradient was larger than the limit...
    assert step.norm().item() == pytest.approx(0.01, rel=1e-4)  # ...and the update is clipped to it


def test_soft_targets_count_the_dominant_label() -> None:
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 2) * 10)
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # predicts classes 0 and 1
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.6, 0.4, 0.0]])  # dominant labels 0 and 0
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    _, hits = train_step(model, x, soft, loss_fn=nn.CrossEntropyLoss(), optimizer=opt,
                         autocast=contextlib.nullcontext())
    assert int(hits) == 1


def test_tta_views_follow_the_training_augmentation() -> None:
    from resnetkit.data import tta_for
    from resnetkit.specs import DatasetSpec

    def spec(mean: tuple[float, ...], std: tuple[float, ...]) -> DatasetSpec:
        return DatasetSpec("x", tuple("abc"), len(mean), 4, mean, std)

    fashion = tta_for("fashion-mnist", spec((0.25,), (0.5,)))
    assert (fashion.flip, fashion.shift, fashion.count) == (True, True, 6)
    assert fashion.fill == (-0.5,)  # black, normalized: training pads with black
    digits = tta_for("mnist", spec((0.25,), (0.5,)))
    assert (digits.flip, digits.count) == (False, 3)  # a mirrored digit is another digit
    cifar = tta_for("cifar10", spec((0.5,) * 3, (0.25,) * 3))
    assert cifar.fill is None and cifar.count == 6  # reflect padding, as CIFAR trains

    x = torch.arange(16.0).view(1, 1, 4, 4)
    views = fashion.views(x)
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[1], x.flip(-1))
    down_right, up_left = views[2], views[3]
    assert torch.equal(down_right[..., 1:, 1:], x[..., :3, :3])  # content moved one pixel down-right
    assert torch.equal(down_right[0, 0, 0, :], torch.full((4,), -0.5))  # the new edge is black
    assert torch.equal(up_left[..., :3, :3], x[..., 1:, 1:])
    assert torch.equal(views[4][..., 1:, 1:], x.flip(-1)[..., :3, :3])  # the flip, shifted
    reflected = cifar.views(x.expand(1, 3, 4, 4))[2]
    assert torch.equal(reflected[0, 0, 0, 1:], x[0, 0, 1, :3])  # reflect: row -1 is row 1


def test_eval_step_with_tta_is_the_mean_of_the_views_logits() -> None:
    from resnetkit.data.augment import TTA
    from resnetkit.steps import eval_step

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 16, 3)).eval()
    x = torch.randn(5, 1, 6, 6)
    tta = TTA(flip=True, shift=True, fill=(0.0,))
    got = eval_step(model, x, autocast=contextlib.nullcontext(), tta=tta)
    want = torch.stack([model(v) for v in tta.views(x)]).mean(0)
    assert torch.allclose(got, want) and not torch.allclose(got, model(x))
    assert torch.equal(eval_step(model, x, autocast=contextlib.nullcontext()), model(x))
