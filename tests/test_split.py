"""--batch-split: a batch's forward and backward in chunks on CPU threads (resnetkit.train.split).
What it must keep: the gradient of the whole batch (exactly, without BatchNorm), determinism, the
model's running statistics, each thread's single intra-op thread, and the flags' rules."""
from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from resnetkit import probe
from resnetkit.cli import main
from resnetkit.models import create_model
from resnetkit.train import train
from resnetkit.train.split import BatchSplit, can_split, chunk_shares
from resnetkit.train.steps import timing_step, train_step

CPU = torch.device("cpu")


def no_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 5))


def batch(n: int = 12, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, classes, (n,), generator=g)


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def whole_and_split(loss_fn: nn.Module, y_soft: bool = False, n: int = 3
                    ) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    x, y = batch()
    if y_soft:
        y = torch.softmax(torch.randn(12, 5, generator=torch.Generator().manual_seed(2)), 1)
    a, b = no_bn_net(), no_bn_net()
    whole = loss_fn(a(x), y)
    whole.backward()
    split = BatchSplit(b, n, contextlib.nullcontext)
    loss, logits = split.forward_backward(x, y, loss_fn)
    split.close()
    assert logits.shape == (12, 5)
    return a, b, whole.detach(), loss


@pytest.mark.parametrize("loss_fn, soft", [
    (nn.CrossEntropyLoss(), False),
    (nn.CrossEntropyLoss(label_smoothing=0.1), False),
    (nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0])), False),  # weighted mean
    (nn.CrossEntropyLoss(), True),  # mixup/cutmix targets
])
def test_without_batchnorm_the_split_gradient_is_the_whole_batch_gradient(loss_fn: nn.Module, soft: bool) -> None:
    a, b, whole, loss = whole_and_split(loss_fn, soft)
    assert torch.allclose(loss, whole, atol=1e-6)
    for ga, gb in zip(grads(a), grads(b)):
        assert torch.allclose(ga, gb, atol=1e-6)


def test_chunk_shares_follow_the_class_weights() -> None:
    y = torch.tensor([0, 0, 1, 1])
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))
    assert chunk_shares(y.tensor_split(2), y, weighted) == [0.25, 0.75]
    assert chunk_shares(y.tensor_split(2), y, nn.CrossEntropyLoss()) == [0.5, 0.5]
    assert chunk_shares(torch.arange(5).tensor_split(2), torch.arange(5), nn.CrossEntropyLoss()) == [0.6, 0.4]


def bn_step(seed_model: int = 0, n: int = 2) -> tuple[nn.Module, BatchSplit]:
    torch.manual_seed(seed_model)
    model = create_model("resnet8", num_classes=5, in_chans=1, widths=[4, 8, 8])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    split = BatchSplit(model, n, contextlib.nullcontext)
    x, y = batch(16)
    for _ in range(3):
        train_step(model, x, y, loss_fn=nn.CrossEntropyLoss(), optimizer=opt, autocast=contextlib.nullcontext(),
                   split=split)
    return model, split


def test_split_steps_are_deterministic_and_the_replicas_follow_the_model() -> None:
    (m1, s1), (m2, s2) = bn_step(), bn_step()
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    s1._copy_in()  # what the next step starts from: the updated weights
    for p, q in zip(m1.parameters(), s1.replicas[0].parameters()):
        assert torch.equal(p, q) and q.grad is None
    s1.close(), s2.close()


def test_running_statistics_are_the_mean_of_the_chunks() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=1.0)  # running stats = the last batch's
    model = nn.Sequential(bn, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    x = torch.randn(8, 3, 4, 4)
    x[4:] += 10  # the two chunks differ
    split = BatchSplit(model, 2, contextlib.nullcontext)
    split.forward_backward(x, torch.zeros(8, dtype=torch.long), nn.CrossEntropyLoss())
    split.close()
    halves = [c.mean((0, 2, 3)) for c in x.tensor_split(2)]
    assert torch.allclose(bn.running_mean, (halves[0] + halves[1]) / 2, atol=1e-5)
    assert int(bn.num_batches_tracked) == 1  # counted once per step, as the whole batch does


def test_each_chunk_runs_on_one_intra_op_thread_and_the_caller_keeps_its_count() -> None:
    seen: list[tuple[str, int]] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return x

    model = nn.Sequential(Spy(), nn.Flatten(), nn.Linear(36, 5))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        split = BatchSplit(model, 2, contextlib.nullcontext)
        x, y = batch()
        split.forward_backward(x, y, nn.CrossEntropyLoss())
        split.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert sorted(n for _, n in seen) == [1, 1]
    assert len({name for name, _ in seen}) == 2  # the caller and one worker


def test_where_the_probe_may_try_a_split() -> None:
    assert can_split(CPU, 2, 128, compile=False) == 2
    assert can_split(CPU, 4, 128, compile=False) == 4
    assert can_split(CPU, 4, 64, compile=False) == 1  # chunks of 16: too noisy for BatchNorm
    assert can_split(CPU, 1, 128, compile=False) == 1
    assert can_split(CPU, 2, 128, compile=True) == 1
    assert can_split(CPU, 2, 128, compile=False, world_size=2) == 1
    assert can_split(torch.device("cuda"), 2, 128, compile=False) == 1


def test_auto_times_the_split_and_a_flag_fixes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(probe, "cpu_flags", lambda: frozenset({"avx2"}))
    calls: list[list[probe.Setting]] = []
    real = probe.probe
    monkeypatch.setattr(probe, "probe", lambda m, i, b, settings, *a, **k: calls.append(list(settings))
                        or real(m, i, b, settings, *a, **k))
    tiny = create_model("resnet8", num_classes=10, in_chans=1, widths=[4, 8, 8])
    args: dict[str, Any] = dict(precision="fp32", channels_last=False, compile=False, network="t",
                                make_step=timing_step)
    choice = probe.choose(tiny, (1, 8, 8), 64, CPU, batch_split=None, max_split=2, **args)
    assert [s.split for s in calls[0]] == [1, 2] and choice.batch_split in (1, 2)
    assert choice.measured and {r["split"] for r in choice.measured} == {1, 2}
    forced = probe.choose(tiny, (1, 8, 8), 64, CPU, batch_split=2, max_split=1, **args)
    assert len(calls) == 1 and forced.chosen_by == "flag" and forced.batch_split == 2
    assert "batch split x2" in forced.describe()
    with pytest.raises(Exception, match="batch-split 2 splits a batch over CPU threads"):
        probe.choose(tiny, (1, 8, 8), 64, torch.device("cuda"), batch_split=2, **args)


def test_a_split_run_trains_records_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    result = train(dataset="digits", epochs=2, batch_split=2, precision="fp32", channels_last=False,
                   out=str(run), verbose=False)
    assert result.report["runtime"]["batch_split"] == 2
    assert result.test_metrics["top1"] > 0.6  # 2 epochs of the default recipe on digits: it learns
    assert json.loads((run / "config.json").read_text())["batch_split"] == 2
    assert main(["train", "--resume", str(run)]) == 0
    assert "batch split x2 (from the resumed run's config)" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--batch-split", "0"], "--batch-split must be a positive integer"),
    (["--batch-split", "2", "--compile"], "cannot run with --compile"),
    (["--batch-split", "2", "--nproc", "2"], "cannot run with --nproc 2"),
    (["--batch-split", "2", "--device", "cuda"], "cannot run with --device cuda"),
    (["--batch-split", "999"], "more chunks than --batch-size"),
])
def test_bad_splits_are_one_line(flags: list[str], message: str, capsys: pytest.CaptureFixture,
                                 tmp_path: Path) -> None:
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
