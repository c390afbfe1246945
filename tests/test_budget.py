"""--time-budget: durations, the epoch fit (hand counts) and a run that follows its fit. The
throughput and the clock are injected; nothing is timed."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from resnetkit import probe, train
from resnetkit.errors import UserError
from resnetkit.training import budget
from resnetkit.training.budget import Budget, Costs, fit_epochs, parse_duration
from resnetkit.data.progressive import epoch_img_sizes
from resnetkit.training.optim import build_scheduler


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("3m", 180), ("1m30s", 90),
                                          ("1.5h", 5400), (45, 45), (2.5, 2.5)])
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0", "-5", "3x", "m", "1m-2s", True])
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(UserError, match="--time-budget"):
        parse_duration(text)


def test_costs_from_a_given_throughput() -> None:
    costs = Costs.from_speed(60_000, 10_000, 6_000)
    assert costs.train_epoch_s == 10 and costs.eval_s == pytest.approx(10_000 / 18_000)


def test_fit_epochs_hand_count() -> None:
    costs = Costs(train_epoch_s=10, eval_s=1, tail_s=3)
    # every 4th epoch and the last evaluate, the report evaluates once more, then 3 s of tail:
    # 9 epochs = 90 + 3 evaluations (4, 8, 9) + 1 + 3 = 97 s; 10 epochs = 100 + 3 + 4 = 107 s
    assert fit_epochs(100, 0, costs, eval_every=4) == 9
    assert fit_epochs(96, 0, costs, eval_every=4) == 8
    assert fit_epochs(1, 0, costs, eval_every=4) == 1  # never below one epoch
    assert fit_epochs(1, 3, costs, eval_every=4) == 4  # nor below the epoch under way


def test_fit_ends_inside_an_epoch_at_a_step() -> None:
    costs = Costs(train_epoch_s=10, eval_s=1, tail_s=3)
    # 9 epochs take 97 s (above); a partial 10th takes over the 9th's evaluation as the last one:
    # 9.3 epochs = 93 + 3 evaluations (4, 8, 10) + 1 + 3 = 100 s; 9.35 (7 of 20 steps) = 100.5 s
    assert fit_epochs(100, 0, costs, eval_every=4, steps_per_epoch=10) == pytest.approx(9.3)
    assert fit_epochs(100, 0, costs, eval_every=4, steps_per_epoch=20) == pytest.approx(9.3)
    assert fit_epochs(98.5, 0, costs, eval_every=4, steps_per_epoch=100) == pytest.approx(9.15)
    # less than MIN_PART (0.1) of one more fits: whole epochs
    assert fit_epochs(97.5, 0, costs, eval_every=4, steps_per_epoch=100) == 9
    # not even the epoch under way fits whole: it ends at the step that fits, past those done
    assert fit_epochs(10, 3, costs, eval_every=4, steps_per_epoch=10) == pytest.approx(3.5)  # 5 + 1 + 1 + 3
    assert fit_epochs(1, 3.45, costs, eval_every=4, steps_per_epoch=10) == pytest.approx(3.5)  # least: 1 step on


def test_refit_of_a_partial_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "process_age", lambda: 0.0)
    costs = Costs(train_epoch_s=10, eval_s=0, tail_s=0)
    b = Budget(100)  # 97 s of plan
    assert b.refit(planned=5, done=1, costs=costs, eval_every=1, steps_per_epoch=10) == pytest.approx(10.7)
    # late in the run: by 5% of the plan at most (5.3 -> 5.565: 5.5 at 10 steps per epoch)
    assert b.refit(planned=5.3, done=3, costs=costs, eval_every=1, steps_per_epoch=10) == pytest.approx(5.5)
    assert b.refit(planned=20, done=6, costs=costs, eval_every=1, steps_per_epoch=10) == pytest.approx(15.7)  # shrinks
    monkeypatch.setattr(budget, "process_age", lambda: 60.0)  # 37 s left after 5 epochs: 3.7 more
    assert b.refit(planned=9, done=5, costs=costs, eval_every=1, steps_per_epoch=10) == pytest.approx(8.7)


def test_max_steps_ends_the_last_epoch_and_the_schedule_there(tmp_path: Path) -> None:
    run = train(**run_cfg(tmp_path, time_budget=None, epochs=5, max_steps=10, verbose=False))
    # 4 steps per epoch: epochs 1-2 whole, the 3rd cut after 2 steps; the schedule ends at step 10
    assert run.config.epochs == 3 and [h["epoch"] for h in run.history] == [1, 2, 3]
    assert "steps" not in run.history[1] and run.history[2]["steps"] == 2  # metrics.jsonl says so
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=run.config.lr)
    sched = build_scheduler(opt, run.config, steps_per_epoch=4)
    lrs = []  # the lr of each of the 10 updates; an epoch records its last one's
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert run.history[-1]["lr"] == pytest.approx(lrs[-1]) and lrs[-1] < 0.05 * run.config.lr
    assert run.history[1]["lr"] == pytest.approx(lrs[7])


def test_first_fit_counts_the_time_already_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "process_age", lambda: 10.0)
    assert Budget.start(120).tail_s == pytest.approx(0.75 * 10)  # the end scales with the start-up
    costs = Costs(train_epoch_s=10, eval_s=1, tail_s=3)
    # 0.97 x 120 - 10 = 106.4 s left; E epochs with an evaluation each cost 11 E + 4
    assert Budget(120).first_fit(costs, eval_every=1) == 9
    with pytest.raises(UserError, match="too short"):
        Budget(10).first_fit(costs, eval_every=1)


def test_refit_shrinks_any_time_and_grows_late_by_5_percent_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "process_age", lambda: 0.0)
    costs = Costs(train_epoch_s=10, eval_s=0, tail_s=0)
    b = Budget(100)  # 97 s of plan: 9 more epochs after the first
    assert b.refit(planned=5, done=1, costs=costs, eval_every=1) == 10  # early: grows
    assert b.refit(planned=5, done=3, costs=costs, eval_every=1) == 5  # late: 5% of 5 is no whole epoch
    assert Budget(500).refit(planned=40, done=20, costs=costs, eval_every=1) == 42  # late: +5%
    assert Budget(418).refit(planned=40, done=1, costs=costs, eval_every=1) == 40  # 41 fit: noise
    assert Budget(440).refit(planned=40, done=1, costs=costs, eval_every=1) == 43
    monkeypatch.setattr(budget, "process_age", lambda: 60.0)  # 37 s left
    assert b.refit(planned=9, done=5, costs=costs, eval_every=1) == 8


def inject(monkeypatch: pytest.MonkeyPatch, images_per_s: float) -> None:
    """The probe 'measured' images_per_s; the process has just started."""
    monkeypatch.setattr(budget, "process_age", lambda: 0.0)
    monkeypatch.setattr(probe, "choose", lambda *a, **k: probe.Choice("fp32", False, False, "probe",
                                                                       images_per_s))


def run_cfg(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {**dict(dataset="digits", subset=64, val_size=0, batch_size=16, time_budget="20s",
                   out=str(tmp_path / "run"), verbose=True), **kw}


def test_time_budget_sets_epochs_from_the_given_throughput(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    inject(monkeypatch, 64.0)
    monkeypatch.setattr(Budget, "refit", lambda self, planned, *a, **k: planned)  # keep the first fit
    run = train(**run_cfg(tmp_path))
    # 64 images at 64 img/s: 1 s per epoch; no val split, so no evaluation during training; the
    # final report's 360 test images at 3 x 64 img/s: 1.875 s; 0.97 x 20 s = 19.4 s hold
    # E x 1 + 1.875 + 1 s (the least tail): E = 16.5, i.e. 16 epochs and 2 of the 17th's 4 steps
    assert run.config.epochs == 17 and run.config.max_steps == 66 and len(run.history) == 17
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["epochs"] == 17 and saved["max_steps"] == 66 and saved["time_budget"] == 20.0
    assert "budget 20s -> 16.50 epochs (66 steps) at ~64 img/s" in capsys.readouterr().out
    # the 17th epoch trained its first 2 batches of 16 only
    assert json.loads((tmp_path / "run" / "report.json").read_text())["best_epoch"] == 17


def test_whole_epochs_where_no_part_of_one_more_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, 64.0)
    monkeypatch.setattr(Budget, "refit", lambda self, planned, *a, **k: planned)
    run = train(**run_cfg(tmp_path, time_budget="19.5s"))  # 18.9 s of plan: 16 epochs + 0.025 of one
    assert run.config.epochs == 16 and run.config.max_steps is None and len(run.history) == 16


def test_a_refit_stretches_the_schedule_to_the_new_length(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, 64.0)
    monkeypatch.setattr(Budget, "refit", lambda self, planned, done, *a, **k: 2 if done >= 1 else planned)
    run = train(**run_cfg(tmp_path, verbose=False))
    assert [h["epoch"] for h in run.history] == [1, 2]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 2
    # the last lr is where a run planned at 2 epochs from the start ends: annealed, not cut off
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=run.config.lr)
    sched = build_scheduler(opt, run.config, steps_per_epoch=4)
    for _ in range(7):  # the 8th update's lr is the last the run used
        opt.step()
        sched.step()
    assert run.history[-1]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert run.history[-1]["lr"] < 0.1 * run.config.lr < run.history[0]["lr"]


def test_a_budget_too_short_for_one_epoch_is_a_user_error(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, 1.0)  # 64 s per epoch
    with pytest.raises(UserError, match="too short"):
        train(**run_cfg(tmp_path, verbose=False))


def test_progressive_epochs_cost_their_share_of_a_full_size_one() -> None:
    # a run of E epochs whose first half trains at a quarter of the full cost (half the side)
    def weights(epochs: int) -> list[float]:
        return [0.25 if e < epochs // 2 else 1.0 for e in range(epochs)]
    costs = Costs(train_epoch_s=10, eval_s=1, tail_s=3, weights=weights)
    # 8 epochs: 4 x 2.5 + 4 x 10 = 50 s of training + 1 evaluation at the end + the report's 1 + 3 = 55 s
    assert costs.train_s(8, 0) == 50
    assert costs.train_s(8, 4.5) == pytest.approx(35)  # half of epoch 5 (full size) is done
    assert costs.train_s(8, 1.5) == pytest.approx(50 - 2.5 - 1.25)
    assert fit_epochs(55, 0, costs, eval_every=100) == 8
    assert fit_epochs(55, 0, Costs(train_epoch_s=10, eval_s=1, tail_s=3), eval_every=100) == 5


def test_size_speeds_interpolate_in_the_pixel_count_between_measured_sizes() -> None:
    from resnetkit.training.budget import SizeSpeeds

    speeds = SizeSpeeds(full=28)
    speeds.record(28, 2_000)  # the probe, at full size
    assert speeds.weights([14, 28]) == pytest.approx([0.25, 1.0])  # one size: the pixel count
    speeds.record(12, 6_000)  # the loop's first steps at 12 px: a third of the full cost, not 18%
    assert speeds.weights([12])[0] == pytest.approx(1 / 3)
    # 20 px lies halfway between 12 and 28 px in pixel count (400 = 144 + (784 - 144) x 0.4)
    assert speeds.weights([20])[0] == pytest.approx(1 / 3 + 0.4 * (1 - 1 / 3))
    assert speeds.weights([8])[0] == pytest.approx(1 / 3)  # below the smallest measured: no cheaper
    assert speeds.full_speed() == pytest.approx(2_000)
    speeds.record(28, 1_000, replace=True)  # the loop's own epoch at full size supersedes the probe
    assert speeds.full_speed() == pytest.approx(1_000)
    speeds.record(28, 3_000)  # later epochs: the mean seconds of the recent ones
    assert speeds.full_speed() == pytest.approx(1 / ((1 / 1_000 + 1 / 3_000) / 2))


def test_without_a_val_split_only_the_final_report_evaluates() -> None:
    # --val-size 0: no evaluation during training, one of the test split at the end
    costs = Costs.from_speed(60_000, 0, 6_000, tail_s=3, report_images=30_000)
    assert costs.eval_s == 0 and costs.report_s == pytest.approx(30_000 / 18_000)
    assert fit_epochs(100, 0, costs, eval_every=1) == 9  # 9 x 10 + 1.67 + 3 s; 10 epochs overrun
    with_val = Costs.from_speed(60_000, 30_000, 6_000, tail_s=3, report_images=30_000)
    assert fit_epochs(100, 0, with_val, eval_every=1) == 8  # 8 x (10 + 1.67) + 1.67 + 3 = 98 s


def test_first_steps_at_a_smaller_size_price_that_size_not_the_full_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, 64.0)  # the probe: 64 img/s at the full 8 px
    seen: list[Costs] = []

    def refit(self: Budget, planned: float, done: float, costs: Costs, eval_every: int, *a: Any) -> float:
        seen.append(costs)
        return planned
    monkeypatch.setattr(Budget, "refit", refit)
    train(**run_cfg(tmp_path, verbose=False, min_img_size=4, progressive_until=1.0))
    first = seen[0]  # after the first steps of epoch 1, at 4 px
    assert first.train_epoch_s == pytest.approx(64 / 64.0)  # full size: still the probe's 1 s
    sizes = epoch_img_sizes(16, 8, 4, 1.0)
    assert sizes[0] == 4 and sizes[-1] == 8
    weights = first.weights(16)
    assert weights[-1] == pytest.approx(1.0) and weights[0] != pytest.approx(0.25)  # measured, not 4/8 squared


def test_first_steps_shrink_the_plan_to_half_at_most(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, 64.0)  # the first fit: 16.5 epochs of 4 steps (above)
    # the first steps 'measure' a passing slowdown that would leave 1 epoch; the ends of epochs keep the plan
    monkeypatch.setattr(Budget, "refit", lambda self, planned, done, *a, **k: 1.0 if done < 1 else planned)
    run = train(**run_cfg(tmp_path, verbose=False))
    assert run.config.max_steps == 33 and len(run.history) == 9  # ceil(0.5 x 66) steps: 8.25 epochs


def test_a_cached_speed_is_timed_afresh_a_just_probed_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit.training.budget import BUDGET_PROBE_S, budget_speed

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(probe, "probe", lambda *a, **k: calls.append(k) or [{"images_per_s": 500.0}])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    args = (net, (1, 2, 2), 8, torch.device("cpu"), False)
    assert budget_speed(probe.Choice("fp32", True, False, "probe", 2_399.0), *args) == 2_399.0 and not calls
    assert budget_speed(probe.Choice("fp32", True, False, "cache", 2_399.0), *args) == 500.0  # another hour's
    assert budget_speed(probe.Choice("fp32", False, False, "flag"), *args) == 500.0
    assert [c["time_cap_s"] for c in calls] == [BUDGET_PROBE_S] * 2


def test_a_first_steps_refit_below_one_epoch_ends_that_epoch_there(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, 64.0)
    monkeypatch.setattr(Budget, "first_fit", lambda self, *a, **k: 1.5)  # 6 steps of 4 per epoch
    monkeypatch.setattr(Budget, "refit", lambda self, planned, done, *a, **k: 0.25 if done < 1 else planned)
    run = train(**run_cfg(tmp_path, verbose=False))  # the first steps (3) halve the plan: 3 steps
    assert run.config.epochs == 1 and run.config.max_steps == 3
    assert len(run.history) == 1 and run.history[0]["steps"] == 3  # one-cycle's end, not past it


def test_max_steps_caps_a_time_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, 64.0)  # the budget alone: 16.5 epochs (above)
    monkeypatch.setattr(Budget, "refit", lambda self, planned, *a, **k: planned + 5)
    run = train(**run_cfg(tmp_path, verbose=False, max_steps=10))
    assert run.config.max_steps == 10 and len(run.history) == 3 and run.history[-1]["steps"] == 2


@pytest.mark.parametrize("seconds", [10, 3600, 36_000, 4 * 86_400])
def test_a_budget_of_days_plans_in_few_evaluations(seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    cost = budget.remaining_seconds
    monkeypatch.setattr(budget, "remaining_seconds", lambda e, *a: calls.append(e) or cost(e, *a))
    costs = Costs(train_epoch_s=0.2, eval_s=0.05, tail_s=1)  # the 8x8 digits: 0.2 s per epoch
    epochs = fit_epochs(seconds, 0, costs, eval_every=1, steps_per_epoch=21)
    # the most epochs that fit, by the closed form: E x 0.25 + 0.05 + 1 <= seconds
    whole = math.floor((seconds - 1.05) / 0.25 + 1e-9)
    assert whole <= epochs < whole + 1
    assert len(calls) <= 2 * math.log2(whole + 2) + 12  # O(log epochs), not one per epoch
    calls.clear()
    sizes = lambda e: budget.SizeSpeeds(28, {28: [1e-3]}).weights(budget.plan_sizes(e, 28, 12, 0.5))
    progressive = Costs(train_epoch_s=0.2, eval_s=0.05, tail_s=1, weights=sizes)
    assert fit_epochs(seconds, 0, progressive, eval_every=1) >= whole  # smaller epochs: more of them
    assert len(calls) <= 2 * math.log2(4 * whole + 2) + 12


def test_the_array_of_epoch_sizes_is_the_progressive_rule() -> None:
    for epochs in (1, 2, 3, 7, 16, 33, 100):
        for full, least, until in ((28, 12, 0.5), (32, 8, 1.0), (28, None, 0.5), (8, 4, 0.3)):
            assert budget.plan_sizes(epochs, full, least, until).tolist() == epoch_img_sizes(epochs, full, least, until)


def test_the_search_agrees_with_a_count_one_by_one() -> None:
    def weights(epochs: int) -> list[float]:
        return [0.25 if e < epochs // 2 else 1.0 for e in range(epochs)]
    for costs in (Costs(train_epoch_s=10, eval_s=1, tail_s=3), Costs(10, 1, 3, weights=weights)):
        for left in (1, 14, 55, 100, 333, 1000):
            for done in (0, 2):
                for every in (1, 3):
                    one_by_one = max(1, done + 1)
                    while budget.remaining_seconds(one_by_one + 1, done, costs, every) <= left:
                        one_by_one += 1
                    assert fit_epochs(left, done, costs, every) == one_by_one


def test_evaluations_counts_in_closed_form() -> None:
    for first in range(1, 9):
        for last in range(0, 30):
            for every in (1, 2, 5):
                slow = sum(1 for e in range(first, last + 1) if e % every == 0 or e == last)
                assert budget.evaluations(first, last, every) == slow


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("10h", 36_000), ("72h", 259_200)])
def test_dry_run_plans_the_whole_budget(monkeypatch: pytest.MonkeyPatch, text: str, seconds: int) -> None:
    from resnetkit.training.plan import dry_run

    monkeypatch.setattr(probe, "choose", lambda *a, **k: probe.Choice("fp32", False, False, "probe", 1_000.0))
    monkeypatch.setattr(budget, "process_age", lambda: 0.0)
    plan = dry_run(train_config(time_budget=text, val_size=0))
    # the training images at 1,000 img/s, the 360 test images at 3,000 and 1 s of tail in 0.97 x the budget
    assert plan["config"]["time_budget"] == seconds
    epoch_s = plan["images_per_epoch"] / 1_000
    assert plan["epochs"] == math.floor((0.97 * seconds - 360 / 3_000 - 1) / epoch_s) + 1  # and a part of one more


def train_config(**kw: Any) -> Any:
    from resnetkit.config import RunConfig

    return RunConfig(**{"dataset": "digits", **kw})


def test_small_replans_are_made_but_not_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    inject(monkeypatch, 64.0)  # the first fit: 16.5 epochs
    # each refit moves the plan by 1 step of 66 (1.5%), then one by 8 steps (12%)
    monkeypatch.setattr(Budget, "refit", lambda self, planned, done, *a, **k:
                        planned + (2 if done == 3 else 0.25))
    train(**run_cfg(tmp_path))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("budget 20s:") and "->" in line]
    assert len(lines) == 1 and "epoch 3" in lines[0]


def test_a_budget_is_not_refused_on_a_probe_made_under_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "process_age", lambda: 0.0)
    monkeypatch.setattr(Budget, "refit", lambda self, planned, *a, **k: planned)  # keep the first fit
    busy = probe.Choice("fp32", False, False, "probe", 1.0, load="the machine is busy: 2 other processes use 180% CPU")
    monkeypatch.setattr(probe, "choose", lambda *a, **k: busy)  # 64 s per epoch: too short for 20 s
    timed: list[Any] = []
    monkeypatch.setattr(probe, "probe", lambda *a, **k: timed.append(a) or [{"images_per_s": 64.0}])
    run = train(**run_cfg(tmp_path, verbose=False))  # measured again: 1 s per epoch, 16.5 epochs fit
    assert len(timed) == 1 and run.config.epochs >= 10
    monkeypatch.setattr(probe, "probe", lambda *a, **k: [{"images_per_s": 1.0}])  # still slow
    monkeypatch.setattr(probe, "other_load", lambda *a: (2, 1.8))
    with pytest.raises(UserError, match=r"too short: .* \(measured twice, now at ~1 img/s; the machine is busy: "
                                        r"2 other processes use 180% CPU\)"):
        train(**run_cfg(tmp_path / "again", verbose=False))


def test_a_load_that_starts_mid_run_costs_from_the_epoch_it_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit.training.budget import SizeSpeeds

    speeds = SizeSpeeds(full=28)
    for _ in range(3):
        speeds.record(28, 3_000)  # quiet epochs
    speeds.record(28, 1_000)  # a second training started beside this one
    assert speeds.full_speed() == pytest.approx(1_000)  # not the mean of 3,000, 3,000 and 1,000
    speeds.record(28, 3_000)  # it ended: the mean of the recent epochs again
    assert speeds.full_speed() == pytest.approx(1 / ((2 / 3_000 + 1 / 1_000) / 3))
    # a run whose epochs slow down 3x at 40% of its budget ends within it: each epoch-end refit
    # prices the rest at the latest speed (10 s epochs, then 30 s; 200 s budget, no eval)
    b, planned, done, clock = Budget(200), 19.0, 0, [0.0]
    monkeypatch.setattr(budget, "process_age", lambda: clock[0])
    costs = Costs(train_epoch_s=10, eval_s=0, tail_s=1)
    while done < planned:
        clock[0] += 10 if clock[0] < 80 else 30
        done += 1
        speeds.record(28, 1.0 / (10 if clock[0] <= 80 else 30))
        costs.train_epoch_s = 1.0 / speeds.full_speed()
        planned = b.refit(planned, done, costs, eval_every=1)
    assert clock[0] + 1 <= 200  # within the budget, the tail included
    assert clock[0] + 1 >= 200 * 0.8  # and it did not give most of it away
