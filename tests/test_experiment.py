"""The degradation experiment at toy size, its grad-norm figure and its input checks."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from resnetkit.cli import main
from resnetkit.errors import UserError
from resnetkit.experiments import degradation
from resnetkit.report import plot_grad_norms

NETS = ["plain8", "plain20", "resnet8", "resnet20"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_sane_png(path: Path) -> None:
    w, h = png_size(path)
    assert 300 <= w <= 2000 and 200 <= h <= 1500
    assert 5_000 < path.stat().st_size < 500_000


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """One toy experiment (60 Fashion-MNIST-format images, depths 8 and 20, 2 epochs) through the CLI."""
    from conftest import write_idx_dataset

    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root, "FashionMNIST", seed=2)
    out = tmp_path_factory.mktemp("exp") / "deg"
    argv = ["experiment", "degradation", "--depths", "8,20", "--epochs", "2", "--subset", "50",
            "--batch-size", "16", "--precision", "fp32", "--device", "cpu", "--data-dir", str(root),
            "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text()), buf.getvalue()


def test_writes_every_output(toy_run: tuple[Path, dict, str]) -> None:
    out, report, _ = toy_run
    for name in ("degradation.png", "grad_norms.png"):
        assert_sane_png(out / name)
    for net in NETS:
        run = out / net
        for name in ("config.json", "metrics.jsonl", "best.safetensors", "report.json", "curves.png"):
            assert (run / name).is_file(), f"{net}/{name} missing"
        assert_sane_png(run / "grad_norms.png")  # the experiment turns --log-grad-norms on
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["model"] == net and cfg["log_grad_norms"] and cfg["epochs"] == 2


def test_all_nets_share_one_recipe(toy_run: tuple[Path, dict, str]) -> None:
    out, _, _ = toy_run
    configs = [json.loads((out / net / "config.json").read_text()) for net in NETS]
    differ = {k for c in configs for k in c if c[k] != configs[0][k]}
    assert differ == {"model", "out"}


def test_table_and_report(toy_run: tuple[Path, dict, str]) -> None:
    out, report, printed = toy_run
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| net")]
    assert [r.split("|")[1].strip() for r in rows] == NETS
    assert set(report["nets"]) == set(NETS)
    for net, r in report["nets"].items():
        assert r["epochs"] == 2 and len(r["train_error"]) == len(r["val_error"]) == 2
        assert r["final_val_error"] == r["val_error"][-1] and 0 <= r["test_error"] <= 1
        assert r["final_train_error"] == r["train_error"][-1] and 0 <= r["final_train_error"] <= 1
        assert r["params"] > 0 and r["seconds"] >= 0
        assert f"| {net} | {100 * r['final_train_error']:.2f}% | {100 * r['final_val_error']:.2f}% | " \
               f"{100 * r['test_error']:.2f}% | {r['params']:,} |" in table
    assert report["nets"]["plain20"]["params"] > report["nets"]["plain8"]["params"]
    assert report["settings"]["depths"] == [8, 20] and report["settings"]["epochs"] == 2
    assert report["evidence"]["wall_time_s"] > 0
    assert report["train_seconds"] == pytest.approx(sum(r["seconds"] for r in report["nets"].values()), abs=0.5)
    grads = report["grad_norms"]
    assert grads["plain20"]["first_stage"] > 0 and grads["resnet20"]["first_stage"] > 0
    assert grads["message"] in printed and grads["message"] in table
    assert table.splitlines()[0].startswith("degradation experiment: fashion-mnist")
    assert "| plain20 |" in printed and report["verdict"]["message"] in printed


def test_verdict_follows_the_numbers(toy_run: tuple[Path, dict, str]) -> None:
    _, report, _ = toy_run
    v, err = report["verdict"], {k: r["final_train_error"] for k, r in report["nets"].items()}
    margin = v["noise_margin"]
    assert v["train_images"] == report["nets"]["plain8"]["train_images"] > 0
    assert margin["plain"] > 0 and margin["resnet"] > 0
    assert v["plain_deeper_trains_worse"] == (err["plain20"] - err["plain8"] > margin["plain"])
    assert v["resnet_deeper_trains_worse"] == (err["resnet20"] - err["resnet8"] > margin["resnet"])
    assert v["train_error"] == {k: err[k] for k in NETS}
    # a net left above 50% train error (a toy run: 50 images, 2 epochs) makes the verdict inconclusive
    assert v["inconclusive"] == any(err[k] > 0.5 for k in ("plain8", "resnet8", "resnet20"))
    if v["inconclusive"]:
        assert not v["reproduced"] and v["message"].startswith("inconclusive: the nets did not train")
    else:
        assert v["reproduced"] == (v["plain_deeper_trains_worse"] and not v["resnet_deeper_trains_worse"])
        assert v["message"].startswith("degradation reproduced" if v["reproduced"] else "degradation not reproduced")
        assert f"{100 * err['plain20']:.2f}%" in v["message"]


def test_verdict_both_ways() -> None:
    def run(name: str, err: float) -> degradation.NetRun:
        kind, depth = name.rstrip("0123456789"), int(name.lstrip("plainresnet"))
        return degradation.NetRun(name, kind, depth, Path(name), [{"train_acc": 1 - err, "val_acc": 0.5}], 1, 1.0)

    v = degradation.verdict([run("plain20", 0.05), run("plain56", 0.08), run("resnet20", 0.04),
                             run("resnet56", 0.03)])
    assert v["reproduced"] and v["message"] == ("degradation reproduced: plain56 trains worse than plain20 "
                                                "(8.00% vs 5.00% train error), resnet56 does not (3.00% vs 4.00%)")
    v = degradation.verdict([run("plain20", 0.05), run("plain56", 0.04), run("resnet20", 0.04),
                             run("resnet56", 0.03)])
    assert not v["reproduced"] and not v["plain_deeper_trains_worse"]
    assert v["message"].startswith("degradation not reproduced at this size: plain56 trains no worse")


def test_a_difference_within_sampling_noise_is_not_degradation() -> None:
    def run(name: str, err: float, n: int) -> degradation.NetRun:
        kind, depth = name.rstrip("0123456789"), int(name.lstrip("plainresnet"))
        return degradation.NetRun(name, kind, depth, Path(name), [{"train_acc": 1 - err}], 1, 1.0,
                                  train_images=n)

    # 5.0% vs 5.5% on 1,000 images: 0.5 points, under two standard errors (about 2 points)
    v = degradation.verdict([run("plain20", 0.050, 1000), run("plain56", 0.055, 1000),
                             run("resnet20", 0.04, 1000), run("resnet56", 0.03, 1000)])
    assert not v["reproduced"] and not v["plain_deeper_trains_worse"] and v["train_images"] == 1000
    assert v["noise_margin"]["plain"] == pytest.approx(2 * ((0.05 * 0.95 + 0.055 * 0.945) / 1000) ** 0.5, abs=1e-6)
    assert "only within noise" in v["message"] and "1,000 images" in v["message"]
    # the same gap on 100,000 images is far outside the noise
    v = degradation.verdict([run("plain20", 0.050, 100_000), run("plain56", 0.055, 100_000),
                             run("resnet20", 0.04, 100_000), run("resnet56", 0.03, 100_000)])
    assert v["reproduced"] and v["message"].startswith("degradation reproduced")


def test_rerun_reuses_finished_runs_and_refuses_other_settings(toy_run: tuple[Path, dict, str]) -> None:
    out, report, _ = toy_run
    cfg = json.loads((out / "plain8" / "config.json").read_text())
    settings = degradation.preset("cpu", depths="8,20", epochs=2, subset=50, batch_size=16,
                                  precision="fp32", device="cpu", data_dir=cfg["data_dir"])
    again = degradation.run_degradation(settings, out, verbose=False)  # nothing trains: a second or less
    assert again["nets"]["plain20"]["train_error"] == report["nets"]["plain20"]["train_error"]
    assert all(r["reused"] for r in again["nets"].values()) and not report["nets"]["plain8"]["reused"]
    (out / "plain8" / "report.json").unlink()  # killed after its last epoch: resumed, not retrained
    resumed = degradation.run_degradation(settings, out, verbose=False)
    assert not resumed["nets"]["plain8"]["reused"] and (out / "plain8" / "report.json").is_file()
    assert resumed["nets"]["plain8"]["train_error"] == report["nets"]["plain8"]["train_error"]
    with pytest.raises(UserError, match="other settings"):
        degradation.run_degradation(degradation.preset("cpu", depths="8,20", epochs=3, subset=50,
                                                       batch_size=16, precision="fp32", device="cpu"),
                                    out, verbose=False)


def test_plot_grad_norms(tmp_path: Path) -> None:
    history = [{"epoch": e, "grad_norms": {"layer1": 0.1 / e, "layer2": 0.5, "layer3": 2.0 * e}}
               for e in range(1, 5)]
    assert plot_grad_norms(history, tmp_path / "g.png")
    assert_sane_png(tmp_path / "g.png")
    assert not plot_grad_norms([{"epoch": 1, "train_acc": 0.5}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize("depths, expect", [("7", "depth 7"), ("20,x", "integers"), ("20", "two depths")])
def test_bad_depths_is_one_clear_line(depths: str, expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "degradation", "--depths", depths]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnetkit: error: ")
    assert expect in err and "6n+2: 8, 20, 32, 44, 56, 110" in err


def test_presets() -> None:
    cpu, paper = degradation.PRESETS["cpu"], degradation.PRESETS["paper"]
    assert cpu.dataset == "fashion-mnist" and cpu.depths == (20, 56) and cpu.subset
    # the paper: 64k iterations of batch 128 over CIFAR-10's 50k images, x0.1 at 32k and 48k
    assert paper.dataset == "cifar10" and paper.batch_size == 128 and paper.lr == 0.1
    assert paper.weight_decay == 1e-4 and paper.schedule == "step" and paper.subset is None
    assert abs(paper.epochs * -(-50_000 // 128) - 64_000) < 391
    with pytest.raises(UserError, match="choose one of cpu, paper"):
        degradation.preset("gpu")
