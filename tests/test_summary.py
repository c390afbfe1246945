"""``summarize`` / ``format_summary`` and ``resnetkit summary``: shapes from hooks, parameters
that add up, FLOPs equal to FlopCounterMode's count of the torchvision reference."""
from __future__ import annotations

import io
import json
import sys

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from resnetkit.cli import main
from resnetkit.models import create_model
from resnetkit.models.summary import format_summary, human, summarize


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet18_summary() -> dict:
    return summarize(create_model("resnet18"), (3, 224, 224), depth=2, name="resnet18")


def test_rows_shapes_and_totals_of_resnet18(resnet18_summary: dict) -> None:
    d = resnet18_summary
    top = [r for r in d["rows"] if r["depth"] == 1]
    assert [(r["name"], r["output_shape"]) for r in top] == [
        ("stem", [64, 56, 56]), ("layer1", [64, 56, 56]), ("layer2", [128, 28, 28]),
        ("layer3", [256, 14, 14]), ("layer4", [512, 7, 7]), ("avgpool", [512, 1, 1]), ("fc", [1000])]
    assert d["total_params"] == d["trainable_params"] == sum(r["params"] for r in top) == 11_689_512
    assert top[0]["params"] == 64 * 3 * 7 * 7 + 2 * 64  # conv1 + bn1
    assert sum(r["flops"] for r in top) == d["total_flops"]
    assert d["model"] == "resnet18" and d["input_size"] == [3, 224, 224]


def test_flops_equal_flop_counter_on_torchvision_reference(resnet18_summary: dict) -> None:
    ref = torchvision.models.resnet18().eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        ref(torch.zeros(1, 3, 224, 224))
    assert resnet18_summary["total_flops"] == counter.get_total_flops()
    assert 3.6e9 < resnet18_summary["total_flops"] < 3.7e9  # 1.8 G multiply-adds, 2 FLOPs each
    fc = next(r for r in resnet18_summary["rows"] if r["name"] == "fc")
    assert fc["flops"] == 2 * 512 * 1000


def test_depth_2_adds_one_row_per_block_that_adds_up(resnet18_summary: dict) -> None:
    rows = resnet18_summary["rows"]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        stage_row = next(r for r in rows if r["name"] == stage)
        blocks = [r for r in rows if r["name"].startswith(stage + ".")]
        assert [r["name"] for r in blocks] == [f"{stage}.0", f"{stage}.1"]
        assert all(r["depth"] == 2 for r in blocks)
        assert sum(r["params"] for r in blocks) == stage_row["params"]
        assert sum(r["flops"] for r in blocks) == stage_row["flops"]
        assert blocks[-1]["output_shape"] == stage_row["output_shape"]


def test_cifar_net_on_8px_digits_and_mode_restored() -> None:
    model = create_model("resnet20", num_classes=10, in_chans=1).train()
    d = summarize(model, (1, 8, 8))
    shapes = [[16, 8, 8], [16, 8, 8], [32, 4, 4], [64, 2, 2], [64, 1, 1], [10]]
    assert [r["output_shape"] for r in d["rows"]] == shapes
    assert [r["name"] for r in d["rows"]] == ["stem", "layer1", "layer2", "layer3", "avgpool", "fc"]
    assert d["rows"][0]["params"] == 16 * 1 * 9 + 2 * 16
    assert sum(r["flops"] for r in d["rows"]) == d["total_flops"]
    assert all(r["flops"] > 0 for r in d["rows"] if r["name"] != "avgpool")
    assert model.training and not any(m._forward_hooks for m in model.modules())


def test_format_summary_is_an_aligned_table_with_human_totals(resnet18_summary: dict) -> None:
    text = format_summary(resnet18_summary)
    lines = text.splitlines()
    for name in ("stem", "layer1", "  layer1.0", "layer4", "avgpool", "fc"):
        assert any(line.startswith(name) for line in lines), name
    table = [line for line in lines if line.startswith(("stem", "layer", "  layer", "avgpool", "fc"))]
    assert len({len(line) for line in table}) == 1  # right-aligned columns end together
    assert "11,689,512 (11.69M)" in text and "3.63 GFLOPs" in text
    assert "a multiply-add counts as 2 FLOPs" in text
    assert human(1_234_567) == "1.23M" and human(81_920_000, "FLOPs") == "81.92 MFLOPs"


# ------------------------------------------------------------------ `resnetkit summary`
def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["summary", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_summary_command_json_totals_equal_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    d = run_json(["resnet20", "--input-size", "1,28,28", "--num-classes", "5"], capsys)
    model = create_model("resnet20", num_classes=5, in_chans=1)
    assert d["total_params"] == n_params(model) == sum(r["params"] for r in d["rows"])
    assert d["input_size"] == [1, 28, 28] and d["rows"][-1]["output_shape"] == [5]
    assert d["rows"][0]["params"] == 16 * 1 * 9 + 2 * 16  # in_chans came from C


def test_summary_command_default_input_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(["resnet8"], capsys)["input_size"] == [3, 32, 32]
    simple = run_json(["simple_resnet", "--depth", "2"], capsys)
    assert simple["input_size"] == [3, 32, 32]
    assert simple["total_params"] == n_params(create_model("simple_resnet"))
    assert [r["name"] for r in simple["rows"] if r["depth"] == 2] == [f"layer1.{i}" for i in range(4)]
    small = run_json(["resnet18", "--input-size", "3x16x16", "--num-classes", "10"], capsys)
    assert small["rows"][0]["output_shape"] == [64, 4, 4] and small["total_params"] == 11_181_642


def test_summary_command_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "plain8", "--input-size", "3,8,8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plain8, input 3x8x8") and "layer3" in out and "Total FLOPs" in out


def test_unknown_model_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "resnet5O"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetkit: error: unknown model 'resnet5O'")
    assert "did you mean" in err and "resnet50" in err and "resnetkit models" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("size", ["3,32", "a,b,c", "3,0,32", "3,32,32,1", ""])
def test_bad_input_size_is_a_clear_error(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "resnet8", "--input-size", size]) == 2
    assert "--input-size takes three positive integers C,H,W" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly(monkeypatch, capsys) -> None:
    class ClosedPipe(io.StringIO):  # `resnetkit models | head -1` once head has exited
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["models"]) == 141
    assert "Traceback" not in capsys.readouterr().err


def test_depth_3_lists_the_stem_layers_and_every_layer_of_each_block() -> None:
    d = summarize(create_model("resnet18", num_classes=10), (3, 64, 64), depth=3)
    rows = [(r["name"], r["depth"], r["output_shape"]) for r in d["rows"]]
    assert rows[:5] == [("stem", 1, [64, 16, 16]), ("conv1", 2, [64, 32, 32]), ("bn1", 2, [64, 32, 32]),
                        ("relu", 2, [64, 32, 32]), ("maxpool", 2, [64, 16, 16])]
    block = [r for r in rows if r[0].startswith("layer2.0.")]
    assert [r[0] for r in block] == ["layer2.0.conv1", "layer2.0.bn1", "layer2.0.conv2", "layer2.0.bn2",
                                     "layer2.0.downsample.0", "layer2.0.downsample.1", "layer2.0.relu"]
    assert all(r[1] == 3 and r[2] == [128, 8, 8] for r in block)
    for blk in ("layer1.0", "layer4.1"):  # a block's layers add up to the block
        parts = [r for r in d["rows"] if r["name"].startswith(blk + ".")]
        whole = next(r for r in d["rows"] if r["name"] == blk)
        assert sum(r["params"] for r in parts) == whole["params"] and sum(r["flops"] for r in parts) == whole["flops"]


def test_summary_opens_densenets_features_and_takes_model_args(capsys: pytest.CaptureFixture[str]) -> None:
    d = run_json(["densenet121", "--input-size", "3,64,64", "--model-arg", "num_classes=0"], capsys)
    names = [r["name"] for r in d["rows"]]
    assert names[:3] == ["stem", "features.denseblock1", "features.transition1"]
    assert names[-3:] == ["features.norm5", "avgpool", "classifier"]  # the classifier: nn.Identity
    assert d["rows"][-1]["output_shape"] == [1024] and d["rows"][-1]["params"] == 0
    assert d["total_params"] == sum(r["params"] for r in d["rows"]) == 7_978_856 - 1_025_000
    d = run_json(["resnet18", "--input-size", "3,32,32", "--model-arg", "small_input=true", "--depth", "3"],
                 capsys)
    assert d["rows"][1]["name"] == "conv1" and d["rows"][1]["output_shape"] == [64, 32, 32]
    assert main(["summary", "resnet18", "--model-arg", "small_inputs=true"]) == 2
    assert "does not take small_inputs" in capsys.readouterr().err
