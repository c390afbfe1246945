"""``resnetkit experiment paper-table`` end to end on a few fake CIFAR-10 JPEGs, and its checks."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from resnetkit.cli import main
from resnetkit.errors import UserError
from resnetkit.experiments import paper_table

TOY = ["--depths", "20", "--iterations", "2", "--batch-size", "16", "--precision", "fp32",
       "--device", "cpu"]


def run_cli(argv: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 train and 2 test JPEGs per class, as the shared CIFAR-10 copy is laid out."""
    from conftest import CIFAR10_NAMES, write_class_folders

    root = tmp_path_factory.mktemp("data")
    for split, n, seed in (("train", 3, 0), ("test", 2, 1)):
        write_class_folders(root / "cifar10-images" / split, {c: n for c in CIFAR10_NAMES},
                            seed=seed, ext=".jpg", sizes=(32, 33))
    return root


@pytest.fixture(scope="module")
def toy_table(toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """resnet20, 2 iterations of batch 16, through the CLI (a few seconds)."""
    out = tmp_path_factory.mktemp("exp") / "table"
    printed = run_cli(["experiment", "paper-table", *TOY, "--data-dir", str(toy_root), "--out", str(out)])
    return out, printed


def test_trains_and_prints_error_against_table_6(toy_table: tuple[Path, str]) -> None:
    out, printed = toy_table
    report = json.loads((out / "report.json").read_text())
    net = report["nets"]["resnet20"]
    assert net["paper_test_error"] == 0.0875 and 0 <= net["test_error"] <= 1
    assert net["steps_done"] == net["steps_planned"] == 2 and net["complete"]
    assert net["params"] == 269_722  # the paper's 0.27M (option A: parameter-free shortcuts)
    cfg = json.loads((out / "resnet20" / "config.json").read_text())
    # the paper's schedule, shortened by --iterations: step drops, SGD, wd 1e-4, nothing held out
    assert (cfg["schedule"], cfg["optimizer"], cfg["weight_decay"], cfg["val_size"]) == ("step", "sgd", 1e-4, 0)
    assert (cfg["lr"], cfg["label_smoothing"], cfg["augment"], cfg["dataset"]) == (0.1, 0.0, "basic", "cifar10")
    row = f"| resnet20 | 0.27M (0.27M) | 1.0 of 1.0 epochs (2 of 2 iterations) | {100 * net['test_error']:.2f}% | 8.75% |"
    assert row in printed and row in (out / "table.md").read_text()
    assert "shortened schedule (2 iterations)" in printed and "not comparable" in report["summary"]


def test_rerun_reuses_and_refuses_other_settings(toy_table: tuple[Path, str], toy_root: Path) -> None:
    out, _ = toy_table
    again = run_cli(["experiment", "paper-table", *TOY, "--data-dir", str(toy_root), "--out", str(out)])
    assert "resnet20: reusing the finished run" in again
    with pytest.raises(UserError, match="other settings"):
        paper_table.run_paper_table(paper_table.settings(depths="20", iterations=3, batch_size=16),
                                    out, verbose=False)


def test_a_budget_cut_run_says_how_far_it_got() -> None:
    s = paper_table.settings(time_budget="10m")
    run = paper_table.NetRun(56, Path("resnet56"), 853_018, 590.0, 0.71, 391, 1_251, 1_251 / 391)
    assert paper_table.progress(s, run) == "3.2 of 163.7 epochs (1,251 of 64,000 iterations)"
    assert not paper_table.complete(s, run)
    assert paper_table.summary(s, [run]) == ("resnet56 stopped at its budget (10m): 3.2 of 163.7 epochs "
                                             "(1,251 of 64,000 iterations), its schedule stretched over "
                                             "them; not the paper's run.")
    cfg = paper_table.run_config(s, 110, Path("r"))
    assert cfg.time_budget == 600 and cfg.max_steps == 64_000 and cfg.warmup_epochs == 1.0


@pytest.mark.parametrize("argv, expect", [
    (["--depths", "18"], "18 not in Table 6"),
    (["--depths", "20,x"], "integers"),
    (["--iterations", "0"], "--iterations must be a positive integer"),
    (["--time-budget", "soon"], "--time-budget takes a duration"),
])
def test_bad_input_is_one_clear_line(argv: list[str], expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "paper-table", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnetkit: error: ") and expect in err


@pytest.mark.slow
def test_time_budget_trains_each_net_in_its_own_process(toy_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "budget"
    run_cli(["experiment", "paper-table", *TOY, "--time-budget", "5m", "--data-dir", str(toy_root),
             "--out", str(out)])
    cfg = json.loads((out / "resnet20" / "config.json").read_text())
    assert cfg["time_budget"] == 300  # the child's own, whole-process budget
    assert json.loads((out / "report.json").read_text())["nets"]["resnet20"]["complete"]
