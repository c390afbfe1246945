"""resnetkit.bench, `resnetkit bench` and the section writer of benchmarks/run.py: tiny models,
two timed steps, no numbers checked beyond "positive" (timing is never asserted)."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

from resnetkit.bench import add_speedups, bench_grid, fastest, format_table, measure_throughput, settings
from resnetkit.cli import main
from resnetkit.errors import UserError
from resnetkit.models import create_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--model", "resnet8", "--input-size", "1,8,8", "--batch-size", "4", "--steps", "2",
        "--warmup", "1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; a second thread only fights the rest of the machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return create_model("resnet8", num_classes=10, in_chans=1)


SETTING = dict(batch_size=4, steps=2, warmup=1, compile=False, device="cpu")


@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("precision,channels_last", [("fp32", False), ("bf16", False), ("fp32", True)])
def test_measure_throughput_rows(mode: str, precision: str, channels_last: bool) -> None:
    row = measure_throughput("resnet8", (1, 8, 8), mode=mode, precision=precision,
                             channels_last=channels_last, **SETTING)
    assert row["error"] is None
    assert row["images_per_s"] > 0 and row["seconds"] > 0
    assert (row["mode"], row["precision"], row["channels_last"], row["compile"], row["batch_size"]) == \
        (mode, precision, channels_last, False, 4)


def test_measure_throughput_takes_model_args() -> None:
    row = measure_throughput("resnet8", (1, 8, 8), mode="train", precision="bf16", channels_last=True,
                             model_args={"widths": [8, 16, 32], "stem_stride": 2}, **SETTING)
    assert row["error"] is None and row["images_per_s"] > 0


def test_measure_throughput_leaves_a_module_alone(tiny: torch.nn.Module) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    measure_throughput(tiny, (1, 8, 8), mode="train", precision="fp32", channels_last=True, **SETTING)
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # timed on a copy
    assert tiny.conv1.weight.is_contiguous()  # channels_last went to the copy


@pytest.mark.parametrize("kwargs", [dict(input_size=(1, 8)), dict(input_size=(0, 8, 8)), dict(batch_size=0),
                                    dict(mode="eval"), dict(precision="fp16"), dict(steps=0),
                                    dict(model="resnet9000"), dict(model_args={"nope": 1})])
def test_measure_throughput_bad_arguments(kwargs: dict) -> None:
    args = {**SETTING, **dict(model="resnet8", input_size=(1, 8, 8), mode="train", precision="fp32",
                              channels_last=False), **kwargs}
    with pytest.raises(UserError):
        measure_throughput(**args)


def test_bench_grid_rows_and_speedups() -> None:
    rows = bench_grid("resnet8", (1, 8, 8), batch_size=4, modes=["infer"], steps=1, warmup=1,
                      compile=False)
    assert [(r["precision"], r["channels_last"]) for r in rows] == \
        [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    assert rows[0]["speedup"] == 1.0 and all(r["speedup"] > 0 for r in rows)


def test_settings_grid_starts_with_fp32_eager() -> None:
    grid = settings(torch.device("cpu"))
    assert grid[0] == {"precision": "fp32", "channels_last": False, "compile": False}
    assert len(grid) == 8 and {g["precision"] for g in grid} == {"fp32", "bf16"}
    assert not any(g["compile"] for g in settings(torch.device("cpu"), compile=False))


def test_fastest_and_speedup_skip_failed_rows() -> None:
    base = dict(mode="train", channels_last=False, compile=False, error=None)
    rows = add_speedups([{**base, "precision": "fp32", "images_per_s": 100.0},
                         {**base, "precision": "bf16", "images_per_s": 250.0},
                         {**base, "precision": "bf16", "compile": True, "images_per_s": None,
                          "error": "failed: RuntimeError: no compiler"}])
    assert rows[1]["speedup"] == pytest.approx(2.5) and rows[2]["speedup"] is None
    assert fastest(rows, "train") is rows[1]
    text = format_table(rows)
    assert "failed: RuntimeError: no compiler" in text
    assert "fastest train: bf16 eager at 250 images/s, 2.50x fp32 eager" in text


def test_cli_prints_table_and_fastest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *TINY, "--train", "--no-compile"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("train ")]
    assert len(lines) == 4 and all("failed" not in line for line in lines)  # fp32/bf16 x channels_last
    assert "compile" in out and "infer " not in out
    assert "fastest train:" in out and "x fp32 eager" in out


def test_cli_json_has_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *TINY, "--no-compile", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {r["mode"] for r in result["rows"]} == {"train", "infer"}
    assert all(r["images_per_s"] > 0 for r in result["rows"])
    assert set(result["fastest"]) == {"train", "infer"} and result["input_size"] == [1, 8, 8]


def test_cli_reports_compile_failure_as_a_row(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C++ compiler found\nlong traceback text")

    monkeypatch.setattr(torch, "compile", broken)
    assert main(["bench", *TINY, "--infer"]) == 0
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if "failed: RuntimeError: no C++ compiler found" in line]
    assert len(failed) == 4  # every compile row, one line each
    assert "long traceback" not in out and "fastest infer:" in out


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet9000"], "unknown model"),
    (["--model", "resnet8", "--input-size", "1,8"], "--input-size"),
    (["--model", "resnet8", "--batch-size", "0"], "--batch-size"),
    (["--model", "resnet8", "--model-arg", "nope=1"], "nope"),
])
def test_cli_bad_input_is_a_user_error(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *argv, "--no-compile"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetkit: error:") and message in err and "Traceback" not in err


# ------------------------------------------------------------------ benchmarks/run.py
@pytest.fixture
def run_py(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("run")


def test_replace_section_keeps_the_rest() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _md import replace_section
    finally:
        sys.path.remove(str(BENCHMARKS))
    doc = "# Title\n\n<!-- a:start -->\nold a\n<!-- a:end -->\n\nprose\n<!-- b:start -->\nold b\n<!-- b:end -->\n"
    new = replace_section(doc, "a", "new a")
    assert new == doc.replace("old a", "new a")
    assert replace_section(new, "a", "new a") == new  # idempotent
    added = replace_section(doc, "c", "c text")
    assert added.startswith(doc.rstrip("\n")) and added.endswith("<!-- c:start -->\nc text\n<!-- c:end -->\n")
    assert replace_section("", "a", "x") == "<!-- a:start -->\nx\n<!-- a:end -->\n"


def test_run_quick_bench_section_writes_between_markers(run_py: object, tmp_path: Path) -> None:
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- bench:start -->\nstale\n<!-- bench:end -->\n\nkept prose\n")
    assert run_py.main(["--quick", "--only", "bench", "--write", str(md)]) == 0  # type: ignore[attr-defined]
    text = md.read_text()
    assert "stale" not in text and text.startswith("# Benchmarks\n") and text.endswith("kept prose\n")
    section = text.split("<!-- bench:start -->", 1)[1].split("<!-- bench:end -->", 1)[0]
    assert "`python benchmarks/run.py --quick --only bench`" in section  # the command, less --write
    assert "resnetkit bench --model resnet8 --model-arg" in section and "--no-compile" in section
    assert "--input-size 1,28,28" in section
    assert "torch " in section and "cores" in section and "--quick smoke run" in section
    assert section.count("| train |") == 4 and section.count("| infer |") == 4
    assert "fastest train:" in section


def test_run_rejects_unknown_sections_and_too_few_seeds(run_py: object) -> None:
    with pytest.raises(SystemExit):
        run_py.parse(["--only", "tta,nope"])  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        run_py.parse(["--seeds", "2"])  # type: ignore[attr-defined]
    args = run_py.parse(["--only", "ttA,bench", "--quick"])  # type: ignore[attr-defined]
    assert args.only == ["tta", "bench"] and args.write is None  # a smoke run writes nothing
    assert run_py.parse([]).write.name == "BENCHMARKS.md"  # type: ignore[attr-defined]
    assert run_py.parse(["--quick", "--write"]).write.name == "BENCHMARKS.md"  # type: ignore[attr-defined]


def test_run_without_data_is_an_error_line(run_py: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("RESNETKIT_DATA", raising=False)
    md = tmp_path / "B.md"
    assert run_py.main(["--only", "tta,throughput", "--write", str(md)]) == 1  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "RESNETKIT_DATA" in err
    assert not md.exists()  # nothing measured, nothing written


def test_tta_row_reports_medians_spread_and_target(run_py: object, tmp_path: Path) -> None:
    runs = [(0, 80.0, 0.996), (1, 95.0, 0.994), (2, 85.0, 0.9955)]  # seed 1: too slow and too low
    row = run_py.tta_row("mnist", runs, False)  # type: ignore[attr-defined]
    assert "| 85.0 (80.0-95.0) | 99.55% (99.40-99.60%) | yes | 2/3 |" in row
    assert "resnetkit train --dataset mnist --recipe fast --seed $S" in row and "--epochs" not in row
    slow = run_py.tta_row("mnist", [(s, w + 10, a) for s, w, a in runs], False)  # type: ignore[attr-defined]
    assert "| no | 1/3 |" in slow  # median 95 s > 90 s
    (tmp_path / "report.json").write_text(json.dumps({"top1": 0.9312, "top5": 0.999}))
    assert run_py.final_accuracy(tmp_path) == pytest.approx(0.9312)  # type: ignore[attr-defined]


def test_compute_rows_reuse_a_finished_run_of_the_same_configuration(run_py: object, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import compute  # benchmarks/compute.py, on the path through run_py

    monkeypatch.chdir(tmp_path)
    lever = compute.Lever("digits", "one epoch", ("--epochs", "1", "--subset", "200"), seeds=1)
    out = compute.run_folder(tmp_path / "runs", lever, 0)
    assert main([*lever.argv(0, str(out)), "--threads", "1"]) == 0  # trained by hand, one thread
    assert compute.same_run(out, lever.argv(0))  # threads do not change what a run computes
    longer = compute.Lever("digits", "one epoch", ("--epochs", "2", "--subset", "200"), seeds=1)
    assert not compute.same_run(out, longer.argv(0))
    tflop, acc, raw, how = compute.train_once(lever, 0, tmp_path / "runs")  # read, not trained
    assert not (out.parent / "seed0.log").exists() and raw is None and how.startswith(("fp32", "bf16"))
    report = json.loads((out / "report.json").read_text())
    assert acc == report["top1"] and report["selected_on"] == "none"  # --val-size 0: nothing chosen
    assert tflop == pytest.approx(3 * report["data"]["train_size"] * forward_flops_8px() / 1e12)
    with pytest.raises(RuntimeError, match="another or an unfinished run"):
        compute.train_once(longer, 0, tmp_path / "runs")  # never trains over a different run
    # the tta section keeps its runs where the compute row of the shipped recipe reads them
    assert run_py.tta_folder(tmp_path, "mnist", 2) == compute.run_folder(  # type: ignore[attr-defined]
        tmp_path, compute.Lever("mnist", compute.RECIPE_ROW), 2)
    assert "Nothing was selected" in run_py.selection_text({"none"}, [])  # type: ignore[attr-defined]
    assert "epoch 3 of 8" in run_py.selection_text({"val"}, ["mnist seed 0: epoch 3 of 8"])  # type: ignore[attr-defined]


def forward_flops_8px() -> int:
    from resnetkit.flops import forward_flops

    return forward_flops(create_model("resnet8", num_classes=10, in_chans=1), (1, 8, 8))


# ------------------------------------------------------------------ bench --probe / --reprobe
def test_cli_probe_prints_the_cache(capsys: pytest.CaptureFixture[str]) -> None:
    from resnetkit import probe

    choice = probe.Choice("fp32", True, False, "probe", 3_210.0, threads=1, spread=0.04)
    probe.write_cache("k", choice, network=json.dumps({"model": "resnet8", "args": {"in_chans": 1}}),
                      input_size=(1, 28, 28), batch_size=128)
    assert main(["bench", "--probe"]) == 0
    out = capsys.readouterr().out
    assert "(1 entry)" in out and 'resnet8 {"in_chans":1} | input 1x28x28 | batch 128' in out
    assert "fp32 + channels_last + 1 thread(s) at 3,210 img/s +-2%" in out
    assert "OpenMP wait policy of this process" in out and "verdict: none yet" in out


def test_cli_reprobe_measures_again(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from resnetkit import probe

    seen: dict[str, object] = {}

    def choose(*a: object, **k: object) -> probe.Choice:
        seen.update(k)
        return probe.Choice("fp32", False, False, "probe", 999.0, threads=1)
    monkeypatch.setattr(probe, "choose", choose)
    monkeypatch.setattr(probe, "wait_policy_for_run", lambda c, spec, run_s, force=False: seen.update(
        wait=spec, force=force) or {"policy": "PASSIVE", "chosen_by": "default", "note": "measured"})
    assert main(["bench", *TINY, "--reprobe"]) == 0
    out = capsys.readouterr().out
    assert seen["reprobe"] is True and seen["force"] is True and seen["wait"]["model"] == "resnet8"
    assert "speed: fp32 + 1 thread (probe: 999 img/s)" in out and "OpenMP wait policy: PASSIVE" in out


def test_cli_without_model_or_probe_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "bench needs --model M (or --probe" in capsys.readouterr().err


# ------------------------------------------------------------------ run.py's busy section (no timing)
def test_busy_section_alternates_and_ends_its_neighbours(run_py: object, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    import subprocess

    started: list[subprocess.Popen] = []
    order: list[tuple[str, str]] = []
    real_start = run_py.start_neighbour  # type: ignore[attr-defined]

    def start(condition: str, quick: bool) -> object:
        order.append(("start", condition))
        if condition == "quiet":
            return real_start(condition, quick)
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        started.append(proc)
        return proc
    speeds = {"quiet": 1000.0, "training": 450.0, "niced": 700.0}

    def fake(workload: str):  # one 'measurement' at the speed of the condition of the neighbour running
        def measure(data_dir: Path, quick: bool, timeout: float, **kw: object) -> dict[str, object]:
            condition = order[-1][1]
            order.append((workload, condition))
            return {"images_per_s": speeds[condition] * (0.5 if workload == "tutorial" else 1), "seconds": 9.0,
                    "threads": 1, "chosen_by": "cache", "wait_policy": "PASSIVE", "reprobed": condition != "quiet"}
        return measure
    monkeypatch.setattr(run_py, "start_neighbour", start)
    monkeypatch.setattr(run_py, "provenance", lambda cmd: f"`{cmd}`")  # its matmul peaks would time
    monkeypatch.setattr(run_py, "BUSY_LOOPS", {"fast": fake("fast"), "tutorial": fake("tutorial")})
    results = run_py.busy_measurements(tmp_path, True, 2, tmp_path)  # type: ignore[attr-defined]
    assert [o for o in order if o[0] == "start"] == [("start", c) for c in run_py.BUSY_CONDITIONS] * 2
    assert all(p.poll() is not None for p in started)  # every neighbour ended
    text = run_py.busy_markdown(results, "PASSIVE (measured)", True, "cmd")  # type: ignore[attr-defined]
    assert "| fast | training | 450 (450-450) | 0.45x | >= 0.4x met |" in text
    assert "| fast | niced | 700 (700-700) | 0.70x | >= 0.8x MISSED |" in text
    assert "| tutorial | training | 225 (225-225) | 0.45x |  |" in text
    assert "re-probed" in text and "--quick smoke run" in text


def test_budget_load_section_reports_wall_over_budget(run_py: object, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    walls = {"quiet": 88.0, "training": 97.0, "training from 40%": 101.0}
    seen: list[str] = []
    monkeypatch.setattr(run_py, "budget_run", lambda d, condition, b, q: seen.append(condition) or walls[condition])
    monkeypatch.setattr(run_py, "provenance", lambda cmd: f"`{cmd}`")
    monkeypatch.setattr(run_py, "BUDGET_LOAD_S", 90)
    text = run_py.section_budget_load(tmp_path, False, "cmd", 2)  # type: ignore[attr-defined]
    assert seen == list(walls) * 2  # alternated
    assert "| quiet | 88.0 (88.0-88.0) | 0.978 | <= 1.05 met |" in text
    assert "| training from 40% | 101.0 (101.0-101.0) | 1.122 | <= 1.10 MISSED |" in text
