"""Bad input and a hostile environment, tried as a new user would: every case ends in one clear
line (no traceback), the documented exit status, and nothing already written is lost.

Exit status: 2 for input the user can fix (a flag, a file, a folder), 1 for an operating-system
failure no check could foresee; a UserError raised while writing says which file and why.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from resnetkit import checkpoint as ckpt
from resnetkit.cli import main
from resnetkit.training import train

from conftest import write_class_folders

DIGITS = ["--epochs", "1", "--batch-size", "128", "--subset", "300"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch digits run, copied by tests that change it."""
    out = tmp_path_factory.mktemp("reliability") / "run"
    assert main(["train", *DIGITS, "--out", str(out)]) == 0
    return out


def one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("resnetkit: error:")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def read_only(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` a place nothing can be created in. chmod is enough for a normal user; root
    ignores permission bits, so there the calls that create files and folders under ``path``
    fail with EACCES as they would for anyone else."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    if os.geteuid() != 0:
        return
    inside = lambda p: Path(os.path.abspath(p)).is_relative_to(path)  # noqa: E731
    real_mkstemp, real_mkdir, real_access = tempfile.mkstemp, os.mkdir, os.access

    def mkstemp(*args, dir=None, **kwargs):  # type: ignore[no-untyped-def]
        if dir is not None and inside(dir):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    def mkdir(p, *args, **kwargs):  # type: ignore[no-untyped-def]
        if inside(p):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
        return real_mkdir(p, *args, **kwargs)

    def access(p, mode, *args, **kwargs):  # type: ignore[no-untyped-def]
        return False if inside(p) and mode & os.W_OK else real_access(p, mode, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "access", access)


def rewrite_metadata(src: Path, dst: Path, **changes: object) -> Path:
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update({k: json.dumps(v) for k, v in changes.items()})
    save_file(tensors, str(dst), metadata=meta)
    return dst


# ------------------------------------------------------------------ the sweep
def _out_is_a_file(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "taken").write_text("keep me\n")
    return ["train", *DIGITS, "--out", str(tmp / "taken")]


def _out_read_only(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    read_only(tmp / "ro", mp)
    return ["train", *DIGITS, "--out", str(tmp / "ro" / "run")]


def _export_read_only(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    read_only(tmp / "ro", mp)
    return ["export", str(run), "--format", "torchscript", "--out", str(tmp / "ro" / "m.pt")]


def _lr_nan(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    return ["train", *DIGITS, "--lr", "nan", "--out", str(tmp / "x")]


def _lr_inf(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    return ["train", *DIGITS, "--lr", "inf", "--out", str(tmp / "x")]


def _bad_yaml(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "c.yaml").write_text("epochs: 1\nlr: [0.1\nbatch_size: 8\n")
    return ["train", "--config", str(tmp / "c.yaml"), "--out", str(tmp / "x")]


def _three_names_ten_outputs(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    with safe_open(str(run / ckpt.BEST), framework="pt") as f:
        spec = json.loads(f.metadata()["spec"])
    names = ["a", "b", "c"]
    bad = rewrite_metadata(run / ckpt.BEST, tmp / "bad.safetensors", classes=names,
                           spec={**spec, "classes": names})
    write_class_folders(tmp / "images", {"x": 1})
    return ["predict", str(bad), str(tmp / "images")]


def _model_args_wrong_type(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    meta_args = {"num_classes": 10, "in_chans": 1, "widths": "wide"}
    bad = rewrite_metadata(run / ckpt.BEST, tmp / "bad.safetensors", model_args=meta_args)
    return ["evaluate", str(bad)]


def _spec_wrong_type(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    with safe_open(str(run / ckpt.BEST), framework="pt") as f:
        spec = json.loads(f.metadata()["spec"])
    bad = rewrite_metadata(run / ckpt.BEST, tmp / "bad.safetensors", spec={**spec, "img_size": "big"})
    return ["evaluate", str(bad)]


def _in_chans_mismatch(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    with safe_open(str(run / ckpt.BEST), framework="pt") as f:
        spec = json.loads(f.metadata()["spec"])
    spec = {**spec, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    bad = rewrite_metadata(run / ckpt.BEST, tmp / "bad.safetensors", spec=spec)
    return ["evaluate", str(bad)]


def _evil_state(tmp: Path, run: Path, mp: pytest.MonkeyPatch) -> list[str]:
    folder = tmp / "evil"
    shutil.copytree(run, folder)

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {tmp / 'pwned'}",))

    torch.save({"epoch": 1, "model": Evil()}, folder / ckpt.STATE)
    return ["train", "--resume", str(folder)]


CASES: dict[str, tuple[Callable[..., list[str]], int, tuple[str, ...]]] = {
    "out-is-a-file": (_out_is_a_file, 2, ("taken", "is a file")),
    "out-read-only": (_out_read_only, 2, ("ro", "Permission denied")),
    "export-read-only": (_export_read_only, 2, ("m.pt", "Permission denied")),
    "lr-nan": (_lr_nan, 2, ("--lr", "finite")),
    "lr-inf": (_lr_inf, 2, ("--lr", "finite")),
    "yaml-line": (_bad_yaml, 2, ("c.yaml", "line 3")),
    "names-vs-head": (_three_names_ten_outputs, 2, ("inconsistent", "3 class names", "10 outputs")),
    "model-args-type": (_model_args_wrong_type, 2, ("inconsistent", "model_args")),
    "spec-type": (_spec_wrong_type, 2, ("inconsistent", "spec.img_size")),
    "in-chans": (_in_chans_mismatch, 2, ("inconsistent", "in_chans")),
    "evil-state": (_evil_state, 2, ("holds pickled code", "not loaded")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_loses_nothing(case: str, run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    make, status, needles = CASES[case]
    before = {p: p.read_bytes() for p in run.iterdir() if p.is_file()}
    argv = make(tmp_path, run, monkeypatch)
    capsys.readouterr()
    assert main(argv) == status
    line = one_line_error(capsys, *needles)
    assert "weights_only=False" not in line
    assert {p: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing lost
    assert not (tmp_path / "pwned").exists()
    if case == "out-is-a-file":
        assert (tmp_path / "taken").read_text() == "keep me\n"


# ------------------------------------------------------------------ cases with more to check
def test_a_symlink_loop_is_walked_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from resnetkit.data.folders import index_imagefolder

    from resnetkit.config import RunConfig
    from resnetkit.data.splits import folder_splits

    def splits(index):  # train and the validation split held out of the one tree
        return folder_splits(index, index.train, RunConfig(dataset="imagefolder"), builtin=False)

    root = write_class_folders(tmp_path / "photos", {"0": 15, "1": 15})
    plain = splits(index_imagefolder(root))
    (root / "0" / "loop").symlink_to(root / "0", target_is_directory=True)
    (root / "1" / "twin.png").symlink_to(root / "1" / "0000.png")
    with pytest.warns(UserWarning, match="skipped 2 link") as caught:
        looped = splits(index_imagefolder(root))
    assert len(caught) == 1
    assert sorted(looped.train.files) == sorted(plain.train.files)
    assert sorted(looped.val.files) == sorted(plain.val.files)
    assert not set(looped.train.files) & set(looped.val.files)
    # the command line shows it as one line, without the source line that raised it
    out = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(root), "--model", "resnet8",
                 "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "link" in line]
    assert warnings == [line for line in warnings if line.startswith("resnetkit: warning:")]
    assert len(warnings) == 1 and "warn(" not in err and "Traceback" not in err


@pytest.fixture
def copied_run(run: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    return folder


def test_enospc_while_writing_a_checkpoint_keeps_the_good_one(copied_run: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import SafetensorError

    loaded = ckpt.load_checkpoint(copied_run)
    good = (copied_run / ckpt.BEST).read_bytes()

    def full_disk(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
        Path(filename).write_bytes(b"partial")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(ckpt.UserError, match="No space left on device; the previous file is kept"):
        ckpt.save_checkpoint(copied_run / ckpt.BEST, loaded.model, arch=loaded.arch,
                             model_args=loaded.model_args, spec=loaded.spec, config=loaded.config,
                             metrics=loaded.metrics)
    assert (copied_run / ckpt.BEST).read_bytes() == good
    assert not [p for p in copied_run.iterdir() if p.name.endswith(".tmp")]


def test_non_finite_weights_are_never_saved(copied_run: Path) -> None:
    loaded = ckpt.load_checkpoint(copied_run)
    good = (copied_run / ckpt.LAST).read_bytes()
    bn = next(m for m in loaded.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = float("inf")
    with pytest.raises(ckpt.NonFiniteWeights, match="running_var.*the previous one is kept"):
        ckpt.save_checkpoint(copied_run / ckpt.LAST, loaded.model, arch=loaded.arch,
                             model_args=loaded.model_args, spec=loaded.spec, config=loaded.config,
                             metrics=loaded.metrics)
    assert (copied_run / ckpt.LAST).read_bytes() == good


def test_divergence_in_fp32_does_not_suggest_fp32(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", *DIGITS, "--lr", "1e6", "--precision", "fp32", "--out", str(tmp_path / "r")]) == 2
    line = one_line_error(capsys, "lower --lr")
    assert "--precision fp32" not in line


def test_evaluate_prints_metrics_before_failing_to_draw(copied_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    read_only(copied_run, monkeypatch)
    try:
        assert main(["evaluate", str(copied_run)]) == 0
        captured = capsys.readouterr()
        assert "top-1" in captured.out or "top1" in captured.out
        assert "no confusion matrix image" in captured.err and "Traceback" not in captured.err
        assert not (copied_run / "confusion-test.png").exists()
    finally:
        copied_run.chmod(0o755)


def test_stale_temp_files_are_removed_on_resume(copied_run: Path) -> None:
    stale = [copied_run / ".best.safetensors.k1ll3d.tmp", copied_run / ".state.pt.abcd.tmp"]
    for p in stale:
        p.write_bytes(b"torn")
    mine = copied_run / "notes.tmp"
    mine.write_text("the user's own file")
    cfg = json.loads((copied_run / "config.json").read_text())
    train(resume=str(copied_run), epochs=cfg["epochs"], verbose=False)  # nothing left to train
    assert not any(p.exists() for p in stale)
    assert mine.exists()


# ------------------------------------------------------------------ a real kill, then resume
@pytest.mark.slow
def test_killed_at_random_moments_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """SIGKILL a real training process three times at random moments; each resume continues,
    and the final weights equal an uninterrupted run's, float for float."""
    import random

    args = ["train", "--epochs", "6", "--batch-size", "64", "--subset", "600", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "resnetkit", *args, "--out", str(ref)], check=True,
                   env=env, capture_output=True)
    out = tmp_path / "killed"
    rng = random.Random(0)
    cmd = [sys.executable, "-m", "resnetkit", *args, "--out", str(out)]
    for _ in range(3):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # kill during training, not during the import of torch
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cmd = [sys.executable, "-m", "resnetkit", "train", "--resume", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    a = ckpt.read_metadata(ref / ckpt.LAST)[1]
    b = ckpt.read_metadata(out / ckpt.LAST)[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
