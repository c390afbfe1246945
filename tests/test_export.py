"""Export to ONNX / TorchScript, metadata round trip, parity, int8, and predict from exported files.

Exported files are run with onnxruntime and torch.jit directly (not only through resnetkit's own
backends) and compared with eager PyTorch. Models are tiny (resnet18 at 32 px, resnet20 at 16 px,
a resnet8 trained for one epoch on 200 digits), so the whole module runs in well under a minute.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from resnetkit import backends as B  # noqa: E402
from resnetkit import export as E  # noqa: E402
from resnetkit.cli import main  # noqa: E402
from resnetkit.specs import DatasetSpec  # noqa: E402
from resnetkit.errors import UserError  # noqa: E402

CLASSES = tuple("abcdefghij")


def spec_for(in_chans: int, size: int) -> DatasetSpec:
    return DatasetSpec("toy", CLASSES, in_chans, size, (0.5,) * in_chans, (0.25,) * in_chans,
                       resize_size=None, interpolation="bilinear")


def eval_net(arch: str, in_chans: int, **kwargs: object) -> torch.nn.Module:
    """A random-init net with non-trivial BatchNorm statistics, in eval mode."""
    from resnetkit.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=len(CLASSES), in_chans=in_chans, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


NETS = [("resnet18", {"small_input": True}, 3, 32), ("resnet20", {}, 1, 16)]


@pytest.fixture(scope="module", params=NETS, ids=[n[0] for n in NETS])
def net(request: pytest.FixtureRequest) -> tuple[str, dict, torch.nn.Module, DatasetSpec]:
    arch, kwargs, in_chans, size = request.param
    return arch, kwargs, eval_net(arch, in_chans, **kwargs), spec_for(in_chans, size)


def test_onnx_round_trip_dynamic_batch_and_metadata(net, tmp_path: Path) -> None:
    arch, kwargs, model, spec = net
    args = {"num_classes": 10, "in_chans": spec.in_chans, **kwargs}
    path = E.export_onnx(model, spec, tmp_path / "m.onnx", arch=arch, model_args=args)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["resnetkit.classes"]) == list(CLASSES)
    assert DatasetSpec.from_dict(json.loads(props["resnetkit.spec"])) == spec
    assert props["resnetkit.arch"] == arch and json.loads(props["resnetkit.model_args"]) == args
    from resnetkit import __version__
    assert props["resnetkit.version"] == __version__
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["resnetkit.arch"] == arch
    for n in (1, 7):
        x = B.random_inputs(spec, n, seed=n)
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
        assert (got.argmax(1) == ref.argmax(1)).all()
    info = B.read_info(path)
    assert info.spec == spec and info.classes == list(CLASSES) and info.model_args == args


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip_and_metadata(net, tmp_path: Path) -> None:
    arch, kwargs, model, spec = net
    path = E.export_torchscript(model, spec, tmp_path / "m.ts", arch=arch)
    files = {"resnetkit.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=files)
    meta = json.loads(files["resnetkit.json"])
    assert meta["classes"] == list(CLASSES) and meta["arch"] == arch
    assert DatasetSpec.from_dict(meta["spec"]) == spec
    with torch.no_grad():
        for n in (1, 7):
            x = B.random_inputs(spec, n, seed=n)
            torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)
    assert B.read_info(path).spec == spec


def test_export_keeps_train_mode_and_static_batch(tmp_path: Path) -> None:
    model, spec = eval_net("resnet20", 1).train(), spec_for(1, 8)
    path = E.export_onnx(model, spec, tmp_path / "static.onnx", dynamic_batch=False)
    assert model.training  # export ran in eval mode and gave the caller's mode back
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 1
    backend = B.OnnxBackend(path)  # feeds a fixed-batch file one image at a time
    parity = B.check_parity(model, backend, B.random_inputs(spec, 5))
    assert parity.n == 5 and parity.top1_agreement == 1.0 and parity.max_abs_diff < 1e-4


def test_old_opset_goes_through_legacy_exporter(tmp_path: Path) -> None:
    model, spec = eval_net("resnet20", 1), spec_for(1, 8)
    path = E.export_onnx(model, spec, tmp_path / "m13.onnx", opset=13)
    assert {o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")} == {13}
    assert B.read_info(path).extra["exporter"] == "legacy"
    assert B.check_parity(model, B.OnnxBackend(path), B.random_inputs(spec, 7)).max_abs_diff < 1e-4


def test_parity_beyond_tolerance_is_a_user_error() -> None:
    model, spec = eval_net("resnet20", 1), spec_for(1, 8)
    off = lambda x: model(x) + 0.01  # noqa: E731
    with pytest.raises(UserError, match="differs from PyTorch.*--atol 0.001"):
        B.check_parity(model, off, B.random_inputs(spec, 4))
    parity = B.check_parity(model, off, B.random_inputs(spec, 4), atol=None)
    assert parity.top1_agreement == 1.0 and parity.max_abs_diff == pytest.approx(0.01, abs=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_missing_onnxruntime_and_foreign_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, spec = eval_net("resnet20", 1), spec_for(1, 8)
    bare = tmp_path / "bare.onnx"  # an ONNX file written without resnetkit's metadata
    torch.onnx.export(model, (B.random_inputs(spec, 2),), str(bare), dynamo=False)
    with pytest.raises(UserError, match="no resnetkit metadata"):
        B.OnnxBackend(bare)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot load"):
        B.OnnxBackend(tmp_path / "junk.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"pip install resnetkit\[onnx\]"):
        B.OnnxBackend(bare)


def test_int8_quantization_writes_qdq_file_with_metadata(tmp_path: Path) -> None:
    from resnetkit.quantize import quantize_onnx

    model, spec = eval_net("resnet20", 1), spec_for(1, 16)
    fp32 = E.export_onnx(model, spec, tmp_path / "m.onnx", arch="resnet20")
    q = quantize_onnx(fp32, tmp_path / "m-int8.onnx", B.batches(B.random_inputs(spec, 64, seed=3), 16))
    assert q.path.is_file() and q.method.startswith("static QDQ")
    ops = {n.op_type for n in onnx.load(str(q.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = B.OnnxBackend(q.path)
    assert int8.classes == list(CLASSES) and int8.info.arch == "resnet20"
    assert int8.info.extra["quantization"] == q.method
    x = B.random_inputs(spec, 64, seed=4)
    parity = B.compare_logits(B.OnnxBackend(fp32), int8, x)
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert parity.top1_agreement >= 0.7 and parity.max_abs_diff < 0.25 * scale


def test_sample_inputs_fall_back_to_random_when_data_is_missing(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETKIT_DATA", str(tmp_path / "empty"))  # where a missing run folder leads
    spec = DatasetSpec("mnist", tuple(str(i) for i in range(10)), 1, 28, (0.1307,), (0.3081,))
    x, source = B.sample_inputs({"dataset": "mnist", "data_dir": str(tmp_path / "nowhere")}, spec, 6)
    assert x.shape == (6, 1, 28, 28) and source.startswith("random")
    digits = DatasetSpec("digits", tuple(str(i) for i in range(10)), 1, 8, (0.5,), (0.25,))
    x, source = B.sample_inputs({"dataset": "digits"}, digits, 6)
    assert x.shape == (6, 1, 8, 8) and source == "digits test images"


# ------------------------------------------------------------------ through a trained checkpoint
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("export-run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        rc = main(["train", "--model", "resnet8", "--epochs", "1", "--subset", "200",
                   "--device", "cpu", "--out", str(run)])
    assert rc == 0
    return run


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digit-pngs")
    d = load_digits()
    paths = []
    for i in range(0, 240, 20):
        p = folder / f"digit{i:03d}_{d.target[i]}.png"
        Image.fromarray(np.floor(d.images[i] * 255 / 16 + 0.5).astype(np.uint8), "L").save(p)
        paths.append(p)
    return paths


def test_cli_export_checkpoint_to_onnx_checks_on_test_images(trained_run: Path, capsys) -> None:
    assert main(["export", str(trained_run), "--check", "32"]) == 0
    out = capsys.readouterr().out
    assert (trained_run / "model.onnx").is_file()
    assert "onnx vs PyTorch: parity on 32 digits test images: top-1 agreement" in out
    info = B.read_info(trained_run / "model.onnx")
    assert info.arch == "resnet8" and info.classes == [str(i) for i in range(10)]
    assert info.spec.name == "digits" and info.spec.in_chans == 1
    assert isinstance(info.extra["metrics"], dict)  # the checkpoint's metrics travel along


def test_cli_export_torchscript_and_failure_beyond_atol(trained_run: Path, tmp_path: Path, capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ts = tmp_path / "digits.ts"
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(ts), "--check", "8"]) == 0
    assert B.read_info(ts).arch == "resnet8"
    assert main(["export", str(trained_run), "--format", "torchscript", "--int8"]) == 2
    assert "--int8 needs --format onnx" in capsys.readouterr().err
    shifted = B.TorchScriptBackend.predict_logits
    monkeypatch.setattr(B.TorchScriptBackend, "predict_logits", lambda self, x: shifted(self, x) + 1.0)
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(ts), "--check", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetkit: error: exported model differs from PyTorch") and "--atol" in err


def test_export_int8_reports_accuracy_and_speed(trained_run: Path, tmp_path: Path) -> None:
    result = E.export_checkpoint(trained_run, out=tmp_path / "d.onnx", check=16, int8=True, calib=64)
    assert result.int8_path == tmp_path / "d-int8.onnx" and result.int8_path.is_file()
    report = result.int8_report
    assert report.n_eval > 100  # the whole digits test split
    assert abs(report.int8_acc - report.fp32_acc) < 0.1 and report.agreement >= 0.8
    assert set(report.fp32_ips) == set(report.int8_ips) == {1, 64}
    text = "\n".join(result.lines())
    assert "test accuracy on" in text and "calibration on 64 digits train images" in text


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def test_predict_onnx_backend_matches_pytorch(trained_run: Path, digit_pngs: list[Path], capsys) -> None:
    if not (trained_run / "model.onnx").is_file():
        assert main(["export", str(trained_run), "--check", "0"]) == 0
    files = [str(p) for p in digit_pngs]
    assert main(["predict", str(trained_run), *files, "--json"]) == 0
    torch_rows = _json_lines(capsys.readouterr().out)
    assert main(["predict", str(trained_run), *files, "--json", "--backend", "onnx"]) == 0
    onnx_rows = _json_lines(capsys.readouterr().out)
    assert main(["predict", str(trained_run / "model.onnx"), *files, "--json"]) == 0
    file_rows = _json_lines(capsys.readouterr().out)
    assert len(torch_rows) == len(onnx_rows) == len(file_rows) == len(files)
    for a, b, c in zip(torch_rows, onnx_rows, file_rows):
        assert a["path"] == b["path"] == c["path"]
        assert a["top"][0]["class"] == b["top"][0]["class"] == c["top"][0]["class"]
        assert b["top"][0]["prob"] == pytest.approx(a["top"][0]["prob"], abs=1e-4)


@pytest.mark.slow
def test_export_mnist_checkpoint_checks_and_quantizes_on_real_data(tmp_path: Path, capsys) -> None:
    import os

    if not os.environ.get("RESNETKIT_DATA"):
        pytest.skip("RESNETKIT_DATA is not set (the real datasets are not at hand)")
    run = tmp_path / "mnist-run"
    assert main(["train", "--dataset", "mnist", "--model", "resnet8", "--epochs", "1", "--subset", "300",
                 "--device", "cpu", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--int8", "--calib", "64", "--check", "32"]) == 0
    out = capsys.readouterr().out
    assert "parity on 32 mnist test images" in out
    assert "calibration on 64 mnist train images" in out and "test accuracy on 10000 images" in out


# ------------------------------------------------------------------ opsets and exporter chatter
def test_opset_out_of_range_is_refused_before_any_work(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model, spec = eval_net("resnet20", 1), spec_for(1, 8)
    for opset in (3, E.max_opset() + 1):
        with pytest.raises(UserError, match=rf"--opset {opset} is out of range: .* opsets 7 to {E.max_opset()}"):
            E.export_onnx(model, spec, tmp_path / "m.onnx", opset=opset)
    # the CLI checks it before reading the checkpoint (which does not even exist here)
    assert main(["export", str(tmp_path / "none.safetensors"), "--opset", "3"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err.startswith("resnetkit: error: --opset 3 is out of range") and err.count("\n") == 1


def test_failed_legacy_export_prints_one_line_and_no_exporter_chatter(capfd: pytest.CaptureFixture[str],
                                                                      tmp_path: Path) -> None:
    # resnet20's option-A shortcut slices with a step of 2: the legacy exporter needs opset 10 for it
    # and, failing at 9, dumps its whole TorchScript IR graph (~20 KB) from C++ onto stdout
    model, spec = eval_net("resnet20", 1), spec_for(1, 8)
    with pytest.raises(UserError) as info:
        E.export_onnx(model, spec, tmp_path / "m9.onnx", opset=9)
    assert capfd.readouterr() == ("", "")
    message = str(info.value)
    assert "at opset 9 failed" in message and "newer --opset" in message and "\n" not in message
    assert "Caused by" not in message and len(message) < 300
    E.export_onnx(model, spec, tmp_path / "m10.onnx", opset=10)  # in range and enough for the model
    assert B.read_info(tmp_path / "m10.onnx").extra["opset"] == 10


def test_cli_export_out_below_a_file_is_a_user_error(trained_run: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    assert main(["export", str(trained_run), "--out", str(tmp_path / "a.png" / "m.onnx"), "--check", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a.png'} is a file, not a folder" in err and err.count("\n") == 1
