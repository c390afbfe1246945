"""resnetkit.probe: which settings are tried, the cache, and what a run records. No speed is
asserted: the machine's capabilities are mocked and the timing function is counted, not timed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from resnetkit import probe
from resnetkit.models import create_model
from resnetkit.steps import timing_step

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; a second thread only fights the rest of the machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' own timings are never a verdict's evidence: no load is seen and any spread
    passes, unless a test sets the timings and the load itself."""
    monkeypatch.setattr(probe, "cpu_ticks", lambda: None)
    monkeypatch.setattr(probe, "STABLE_SPREAD", float("inf"))


@pytest.fixture()
def tiny() -> torch.nn.Module:
    return create_model("resnet8", num_classes=10, in_chans=1, widths=[4, 8, 8])


def choose(model: torch.nn.Module, **kw: Any) -> probe.Choice:
    args = dict(precision="auto", channels_last=None, compile=False, network="resnet8-tiny",
                make_step=timing_step)
    return probe.choose(model, (1, 8, 8), 4, CPU, **{**args, **kw})


@pytest.fixture()
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "cpu_flags", lambda: frozenset({"avx2", "fma"}))


@pytest.fixture()
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[list[probe.Setting]]:
    """Each call of probe.probe records the settings it was asked to time."""
    calls: list[list[probe.Setting]] = []
    real = probe.probe

    def wrapper(model: Any, input_size: Any, batch_size: int, settings: Any, *a: Any, **kw: Any) -> Any:
        calls.append(list(settings))
        return real(model, input_size, batch_size, settings, *a, **kw)
    monkeypatch.setattr(probe, "probe", wrapper)
    return calls


def test_bf16_native_reads_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not probe.bf16_native()  # AVX-512 alone emulates bf16
    monkeypatch.setattr(probe, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert probe.bf16_native()
    monkeypatch.setattr(probe, "cpu_flags", lambda: None)  # no /proc/cpuinfo: oneDNN decides
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert not probe.bf16_native()


def test_auto_falls_back_to_fp32_where_bf16_is_not_native(tiny: torch.nn.Module, no_native_bf16: None,
                                                          counted: list) -> None:
    choice = choose(tiny)
    assert [s.precision for s in counted[0]] == ["fp32", "fp32"]  # bf16 never timed
    assert {s.channels_last for s in counted[0]} == {False, True}
    assert choice.precision == "fp32" and choice.chosen_by == "probe"
    assert "bf16 not native here" in choice.describe()
    assert choice.images_per_s and choice.images_per_s > 0


def test_auto_tries_bf16_where_it_is_native(tiny: torch.nn.Module, native_bf16: None, counted: list) -> None:
    choice = choose(tiny)
    assert sorted((s.precision, s.channels_last) for s in counted[0]) == \
        [("bf16", False), ("bf16", True), ("fp32", False), ("fp32", True)]
    assert choice.precision in ("fp32", "bf16") and "not native" not in choice.describe()


def test_the_cache_answers_the_second_run(tiny: torch.nn.Module, counted: list) -> None:
    first = choose(tiny)
    second = choose(tiny)
    assert len(counted) == 1  # the probe ran once
    assert second.chosen_by == "cache" and "cached probe" in second.describe()
    assert (second.precision, second.channels_last, second.images_per_s) == \
        (first.precision, first.channels_last, first.images_per_s)
    assert probe.cache_file().is_file()
    choose(tiny, network="another net")  # a different network is probed again
    assert len(counted) == 2


def test_forced_flags_are_not_probed(tiny: torch.nn.Module, counted: list) -> None:
    choice = choose(tiny, precision="fp32", channels_last=True)
    assert counted == [] and choice.chosen_by == "flag"
    assert (choice.precision, choice.channels_last) == ("fp32", True)
    choose(tiny, precision="fp32")  # one axis forced: the other is timed
    assert [(s.precision, s.channels_last) for s in counted[0]] == [("fp32", False), ("fp32", True)]


def test_a_failing_setting_is_skipped(tiny: torch.nn.Module, no_native_bf16: None) -> None:
    def make_step(model: torch.nn.Module, mode: str, precision: str) -> Any:
        step = timing_step(model, mode, precision)
        if any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters()):  # NHWC
            raise RuntimeError("no NHWC kernel here")
        return step
    choice = choose(tiny, make_step=make_step)
    assert choice.channels_last is False
    assert any(r["error"] and "no NHWC kernel" in r["error"] for r in choice.measured)


def test_a_broken_cache_file_is_ignored(tiny: torch.nn.Module) -> None:
    probe.cache_file().parent.mkdir(parents=True, exist_ok=True)
    probe.cache_file().write_text("not json")
    assert choose(tiny).chosen_by == "probe"
    assert len(json.loads(probe.cache_file().read_text())) == 1


def test_the_probe_leaves_the_model_and_the_random_stream_alone(tiny: torch.nn.Module) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    torch.manual_seed(3)
    choose(tiny)
    after_probe = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after_probe, torch.rand(3))
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


def test_cuda_keeps_its_rule(tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, counted: list) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    choice = probe.choose(tiny, (1, 8, 8), 4, torch.device("cuda"), precision="auto", channels_last=None,
                          compile=False, network="n", make_step=timing_step)
    assert (choice.precision, choice.channels_last, choice.chosen_by) == ("fp16", False, "rule")
    assert counted == []


def test_a_short_run_is_not_probed(tiny: torch.nn.Module, counted: list) -> None:
    least = 4 * (probe.WARMUP_STEPS + probe.MIN_ROUNDS)  # four candidates where bf16 is native
    choice = choose(tiny, run_steps=10)
    assert counted == [] and choice.chosen_by == "rule" and "too short to probe" in choice.reason
    assert (choice.precision, choice.channels_last) == ("fp32", False)
    choose(tiny, run_steps=int(least / probe.MAX_SHARE) + 1)
    assert len(counted) == 1


def test_a_run_records_its_runtime(tmp_path: Path, no_native_bf16: None,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit import train

    monkeypatch.setattr(probe, "MAX_SHARE", 1e9)  # probe however short the run

    run = train(dataset="digits", epochs=1, subset=64, out=str(tmp_path / "run"), verbose=False)
    rt = run.report["runtime"]
    assert {"device", "precision", "channels_last", "compile", "threads", "images_per_s",
            "chosen_by"} <= set(rt)
    assert rt["precision"] == "fp32" and rt["chosen_by"] == "probe" and rt["images_per_s"] > 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["precision"] == "fp32" and saved["channels_last"] == rt["channels_last"]
    again = train(dataset="digits", epochs=1, subset=64, out=str(tmp_path / "again"), verbose=False)
    assert again.report["runtime"]["chosen_by"] == "cache"
    forced = train(dataset="digits", epochs=1, subset=64, precision="fp32", channels_last=False,
                   out=str(tmp_path / "forced"), verbose=False)
    assert forced.report["runtime"]["chosen_by"] == "flag"


def test_the_probe_takes_rounds_until_its_time_cap(tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[int] = []

    def fake(step: Any, x: Any, y: Any, steps: int, device: Any) -> float:
        timed.append(steps)
        return 0.001 * steps  # never sleeps: the cap is never reached
    monkeypatch.setattr(probe, "time_steps", fake)
    monkeypatch.setattr(probe, "STABLE_ROUNDS", probe.MAX_ROUNDS)  # agreeing steps stop it no earlier
    settings = [probe.Setting("fp32", False), probe.Setting("fp32", True)]
    rows = probe.probe(tiny, (1, 8, 8), 4, settings, CPU, timing_step)
    assert timed.count(1) == len(settings) * probe.MAX_ROUNDS and probe.MAX_ROUNDS > 7
    assert all(r["images_per_s"] == 4000.0 for r in rows)
    timed.clear()
    probe.probe(tiny, (1, 8, 8), 4, settings, CPU, timing_step, time_cap_s=0.0)
    assert timed.count(1) == len(settings) * probe.MIN_ROUNDS


# ------------------------------------------------------------------ threads, noise, the live check
def fake_times(monkeypatch: pytest.MonkeyPatch, per_thread: dict[int, Any]) -> None:
    """Each step 'takes' per_thread[threads at the time] seconds (a number, or a callable of the
    call count for noise); nothing is timed."""
    calls = [0]

    def fake(step: Any, x: Any, y: Any, steps: int, device: Any) -> float:
        calls[0] += 1
        t = per_thread[torch.get_num_threads()]
        return steps * (t(calls[0]) if callable(t) else t)
    monkeypatch.setattr(probe, "time_steps", fake)


def test_the_candidates_include_the_thread_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert probe.thread_candidates(None) == [1, 4, 8]
    assert probe.thread_candidates(3) == [3]  # --threads fixes the axis
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert probe.thread_candidates(None) == [1, 2]
    settings = probe.candidates(CPU, "auto", None, False, False, probe.thread_candidates(None))
    assert {(s.channels_last, s.threads) for s in settings} == {(False, 1), (False, 2), (True, 1), (True, 2)}


def test_the_probe_chooses_the_thread_count_and_restores_the_old_one(
        tiny: torch.nn.Module, no_native_bf16: None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    try:
        fake_times(monkeypatch, {1: 0.004, 2: 0.010})  # 2 threads spin against a neighbour: slower
        choice = choose(tiny, channels_last=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert choice.threads == 1 and choice.threads_by == "probe" and choice.images_per_s == 1000.0
    assert "1 thread" in choice.describe()
    assert {r["threads"] for r in choice.measured} == {1, 2}
    forced = choose(tiny, channels_last=False, threads=2)  # one setting left: nothing to time
    assert forced.chosen_by == "flag" and forced.threads == 2 and forced.threads_by == "flag"


def test_a_noisy_probe_says_so_and_is_not_cached(tiny: torch.nn.Module, no_native_bf16: None,
                                                 monkeypatch: pytest.MonkeyPatch, counted: list) -> None:
    monkeypatch.setattr(probe, "STABLE_SPREAD", 0.15)
    noisy = {1: lambda n: 0.004 * (1 + 3 * (n % 2))}  # every other step 4x slower: a neighbour's spells
    fake_times(monkeypatch, noisy)
    first = choose(tiny)
    assert first.chosen_by == "probe" and not first.cached and first.spread > 0.15
    assert "not cached" in first.reason and "spread" in first.reason
    choose(tiny)
    assert len(counted) == 2  # measured again: the first was no verdict
    fake_times(monkeypatch, {1: 0.004})
    steady = choose(tiny)
    assert steady.cached and steady.spread == 0 and choose(tiny).chosen_by == "cache"


def test_a_probe_beside_busy_processes_names_them_and_is_not_cached(
        tiny: torch.nn.Module, no_native_bf16: None, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_times(monkeypatch, {1: 0.004})
    ticks = iter([{11: 0, 12: 0, 13: 0, 14: 5}, {11: 50, 12: 40, 13: 50, 14: 5}])
    monkeypatch.setattr(probe, "cpu_ticks", lambda: next(ticks))
    monkeypatch.setattr(probe, "other_load", lambda b, a, s: real_other_load(b, a, 1.0))
    choice = choose(tiny)
    assert "the machine is busy: 3 other processes use 140% CPU" in choice.reason  # 100 ticks/s
    assert not choice.cached and probe.read_cache() == {}


real_other_load = probe.other_load


def test_other_load_counts_the_processes_that_used_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe.os, "sysconf", lambda name: 100)
    assert real_other_load({1: 0, 2: 0}, {1: 100, 2: 1, 3: 60}, 1.0) == (2, pytest.approx(1.6))  # 2: idle
    assert probe.load_text((1, 0.2)) == ""  # a little use is no load
    assert real_other_load(None, {1: 5}, 1.0) is None


def test_a_cache_two_times_off_the_live_speed_is_measured_again(
        tmp_path: Path, no_native_bf16: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit import train

    monkeypatch.setattr(probe, "MAX_SHARE", 1e9)  # probe however short the run
    train(dataset="digits", epochs=1, subset=96, batch_size=8, out=str(tmp_path / "a"), verbose=False)
    cache = probe.read_cache()
    (key, entry), = cache.items()
    real = probe.choose
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(probe, "choose", lambda *a, **k: calls.append(k) or real(*a, **k))
    # the run's first steps: at the cached speed, then at a tenth of it (a polluted entry)
    for polluted, reprobed in ((1.0, False), (10.0, True), (0.1, True)):
        probe._write({key: {**entry, "images_per_s": entry["images_per_s"] * polluted}})
        monkeypatch.setattr(probe, "recheck", lambda c, live: real_recheck(c, c.images_per_s / polluted))
        calls.clear()
        run = train(dataset="digits", epochs=1, subset=96, batch_size=8, out=str(tmp_path / f"r{polluted}"),
                    verbose=False)
        assert [k.get("reprobe", False) for k in calls] == [False] + [True] * reprobed
        assert run.report["runtime"]["chosen_by"] == ("probe" if reprobed else "cache")
        if reprobed:  # the entry was rewritten from the new measurement
            assert probe.read_cache()[key]["images_per_s"] != entry["images_per_s"] * polluted


real_recheck = probe.recheck


def test_recheck_compares_a_cached_speed_with_the_live_one() -> None:
    cached = probe.Choice("fp32", False, False, "cache", 1_000.0)
    assert not probe.recheck(cached, 1_900.0) and not probe.recheck(cached, 600.0)
    assert probe.recheck(cached, 2_100.0) and probe.recheck(cached, 400.0)
    assert not probe.recheck(probe.Choice("fp32", False, False, "probe", 1_000.0), 100.0)  # just measured


# ------------------------------------------------------------------ --test-subset and the whole process's time
def test_test_subset_counts_and_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from resnetkit import train

    run = train(dataset="digits", epochs=1, subset=200, test_subset=50, out=str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert run.report["num_samples"] == 50 and run.test_metrics["num_samples"] == 50
    assert run.report["data"]["test_subset"] == 50 and run.report["data"]["test_of"] == 360
    per_class = [row["support"] for row in run.report["per_class"].values()] if isinstance(
        run.report["per_class"], dict) else [row["support"] for row in run.report["per_class"]]
    assert max(per_class) - min(per_class) <= 1  # stratified: 360 images of 10 balanced classes
    assert "on 50 of 360 test images (--test-subset)" in out and "50 of 360 images (--test-subset)" in out
    again = train(dataset="digits", epochs=1, subset=200, test_subset=50, seed=1, out=str(tmp_path / "again"),
                  verbose=False)
    assert again.report["num_samples"] == 50  # the same images whatever the seed (the subset's own stream)
    ev = run.report["evidence"]
    assert ev["process_s"] >= ev["wall_time_s"] > 0  # the whole process, test pass and report included
    assert json.loads((tmp_path / "run" / "report.json").read_text())["evidence"]["process_s"] == ev["process_s"]
    assert "s in all" in out


@pytest.mark.parametrize("value", [0, -3])
def test_test_subset_rejects_what_selects_nothing(tmp_path: Path, value: int) -> None:
    from resnetkit import train
    from resnetkit.errors import UserError

    with pytest.raises(UserError, match="--test-subset must be a whole number of test samples"):
        train(dataset="digits", epochs=1, test_subset=value, out=str(tmp_path / "run"), verbose=False)


# ------------------------------------------------------------------ the OpenMP wait policy
ENTRY = ("import os, sys; from resnetkit.cli import main; "
         "sys.exit(main(['bench', '--probe']) or ('torch' in sys.modules))")


def entry_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "RESNETKIT_WAIT_POLICY_BY")}
    return {**env, "RESNETKIT_CACHE": str(tmp_path), **extra}


def run_entry(env: dict[str, str]) -> str:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", ENTRY], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr  # and torch never loaded: --probe reads files only
    return out.stdout


def test_the_wait_policy_is_set_before_torch_loads_unless_the_user_set_it(tmp_path: Path) -> None:
    assert "wait policy of this process: PASSIVE (default:" in run_entry(entry_env(tmp_path))
    user = run_entry(entry_env(tmp_path, OMP_WAIT_POLICY="ACTIVE"))
    assert "ACTIVE (user: OMP_WAIT_POLICY=ACTIVE was set by the user)" in user


def test_a_measured_verdict_is_used_at_the_next_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit import _omp

    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path))
    _omp.write_verdict({"policy": "ACTIVE", "reason": "ACTIVE +9% against PASSIVE"})
    out = run_entry(entry_env(tmp_path))
    assert "wait policy of this process: ACTIVE (cache:" in out and "verdict: ACTIVE" in out


def test_the_entry_leaves_an_already_loaded_torch_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from resnetkit import _omp

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    _omp.set_at_entry()  # torch is loaded in this process: setting it now would change nothing
    assert "OMP_WAIT_POLICY" not in os.environ and _omp.current()["chosen_by"] == "none"


@pytest.mark.parametrize("active,passive,noisy,policy,cached", [
    (0.010, 0.0102, False, "PASSIVE", True),  # PASSIVE costs 2%: no reason to spin
    (0.010, 0.0120, False, "ACTIVE", True),  # spinning wins by 20% on a quiet machine
    (0.010, 0.0120, True, "PASSIVE", False),  # a noisy measurement decides nothing
])
def test_the_wait_policy_is_decided_by_numbers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, active: float,
                                               passive: float, noisy: bool, policy: str, cached: bool) -> None:
    from resnetkit import _omp

    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(probe, "STABLE_SPREAD", 0.15)  # the fixture's 'any spread passes' is off here
    order: list[str] = []

    def child(spec: Any, which: str, steps: int, timeout: float) -> list[float]:
        order.append(which)
        base = active if which == "ACTIVE" else passive
        return [base * (3 if noisy and i % 2 else 1) for i in range(steps)]
    monkeypatch.setattr(probe, "run_wait_child", child)
    verdict = probe.measure_wait_policy({"batch_size": 128})
    assert order == ["ACTIVE", "PASSIVE"] * probe.WAIT_CHILDREN  # alternated, new processes
    assert verdict["policy"] == policy and verdict["cached"] is cached
    assert (_omp.read_verdict() or {}).get("policy") == (policy if cached else None)


def test_a_wait_child_runs_at_toy_size() -> None:
    # the child's code path, in a real process: its step times are not looked at
    spec = {"model": "resnet8", "model_args": {"num_classes": 10, "in_chans": 1, "widths": [4, 8, 8]},
            "input_size": [1, 8, 8], "batch_size": 4, "threads": 1}
    times = probe.run_wait_child(spec, "PASSIVE", 2, timeout_s=120)
    assert len(times) == 2 and all(t > 0 for t in times)


def test_a_run_records_its_threads_and_wait_policy(tmp_path: Path, no_native_bf16: None,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from resnetkit import train

    monkeypatch.setattr(probe, "MAX_SHARE", 1e9)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("RESNETKIT_WAIT_POLICY_BY", "default")
    measured: list[Any] = []
    monkeypatch.setattr(probe, "measure_wait_policy", lambda spec: measured.append(spec) or {
        "policy": "PASSIVE", "cached": True, "reason": "ACTIVE +1% against PASSIVE"})
    monkeypatch.setattr(probe, "wait_policy_cost", lambda step_s: 0.0)  # any run can pay for it
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    run = train(dataset="digits", epochs=1, subset=64, out=str(tmp_path / "run"))
    rt = run.report["runtime"]
    assert rt["threads"] == run.config.threads and rt["threads_chosen_by"] == "probe"
    assert rt["omp_wait_policy"] == "PASSIVE" and rt["wait_policy_chosen_by"] == "default"
    assert "measured now for the next runs: PASSIVE" in rt["wait_policy_note"] and len(measured) == 1
    out = capsys.readouterr().out
    assert "OpenMP wait policy: PASSIVE (default:" in out and "thread" in out.split("speed:")[1].splitlines()[0]
