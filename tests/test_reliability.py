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


# ================================================================== third pass
# ------------------------------------------------------------------ one run per folder
def _hold_lock(folder: Path) -> subprocess.Popen:
    """A live process holding the run folder's lock, as a training does (an flock on the lock
    file, its pid inside), until its stdin closes; plain Python, so it starts in milliseconds."""
    from resnetkit.training.run_folder import LOCK_NAME

    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.write(fd, b'%d\\n' % os.getpid()); "
            "print('locked', flush=True); sys.stdin.read(); os.unlink(sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder / LOCK_NAME)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("case", ["new-folder", "resume"])
def test_a_folder_in_use_is_refused_and_untouched(case: str, run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    from resnetkit.training.run_folder import LOCK_NAME

    folder = tmp_path / "same"
    if case == "resume":
        shutil.copytree(run, folder)
    else:
        folder.mkdir()
    holder = _hold_lock(folder)
    try:
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        argv = ["train", "--resume", str(folder)] if case == "resume" else ["train", *DIGITS, "--out", str(folder)]
        capsys.readouterr()
        assert main(argv) == 2
        line = one_line_error(capsys, f"{folder} is in use by another training (pid {holder.pid})",
                              "choose another --out")
        assert "Traceback" not in line
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # touched nothing
    finally:
        holder.communicate("")
    assert not (folder / LOCK_NAME).exists()  # the holder removed it when done


@pytest.mark.parametrize("left", ["dead-pid", "empty-file"])
def test_a_stale_lock_is_taken_over_with_a_note(left: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    from resnetkit.training.run_folder import LOCK_NAME

    folder = tmp_path / "run"
    folder.mkdir()
    pid = _dead_pid()
    (folder / LOCK_NAME).write_text(f"{pid}\n" if left == "dead-pid" else "")
    assert main(["train", *DIGITS, "--out", str(folder)]) == 0
    out = capsys.readouterr().out
    assert (f"took over the lock left by pid {pid}" in out) == (left == "dead-pid")
    assert (folder / "report.json").is_file() and not (folder / LOCK_NAME).exists()


def test_a_lock_is_released_when_the_run_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from resnetkit.training import run_folder

    folder = tmp_path / "run"
    assert main(["train", *DIGITS, "--lr", "1e6", "--precision", "fp32", "--out", str(folder)]) == 2
    assert not (folder / run_folder.LOCK_NAME).exists()
    run_folder.acquire(folder).release()  # free again


# ------------------------------------------------------------------ arrays: no label guessed
def _arrays(n: int = 40, classes: int = 4, seed: int = 0) -> tuple["np.ndarray", "np.ndarray"]:
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    return x, y


def _rows_of_zeros(tmp: Path):  # type: ignore[no-untyped-def]
    import numpy as np

    x, y = _arrays()
    onehot = np.eye(4)[y]
    onehot[[3, 17]] = 0
    return {"x_train": x, "y_train": onehot}, ("2 of 40 rows", "not one-hot", "row(s) 3, 17")


def _probabilities(tmp: Path):  # type: ignore[no-untyped-def]
    import numpy as np

    x, y = _arrays()
    soft = np.eye(4)[y] * 0.7 + 0.075
    return {"x_train": x, "y_train": soft}, ("40 of 40 rows", "not one-hot", "0, 1, 2, 3, 4 and 35 more")


def _stray_label(tmp: Path):  # type: ignore[no-untyped-def]
    x, y = _arrays(n=600, classes=9)
    y = y.copy()
    y[517] = 42
    return {"x_train": x, "y_train": y}, ("labels are 0..8 and 42 (index 517)", "33 of 43 classes",
                                          "pass --classes to name 43 classes, or fix the label")


def _labels_from_one(tmp: Path):  # type: ignore[no-untyped-def]
    x, y = _arrays()
    return {"x_train": x, "y_train": y + 1}, ("start at 1, not 0", "number the classes from 0")


def _pickled_npz(tmp: Path):  # type: ignore[no-untyped-def]
    import numpy as np

    x, _ = _arrays()
    return {"x_train": x, "y_train": np.array([{"a": 1}] * 40, dtype=object)}, (
        "holds Python objects", "not loaded")


def _random_bytes(tmp: Path):  # type: ignore[no-untyped-def]
    return b"\x00garbage" * 300, ("not a plain .npz array file",)


def _zip_not_npz(tmp: Path):  # type: ignore[no-untyped-def]
    return b"PK\x03\x04" + b"\x01" * 64, ("not a plain .npz array file",)


ARRAY_CASES = {"rows-of-zeros": _rows_of_zeros, "probabilities": _probabilities, "stray-label": _stray_label,
               "labels-from-1": _labels_from_one, "pickled-npz": _pickled_npz, "random-bytes": _random_bytes,
               "zip-not-npz": _zip_not_npz}


@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_array_files_that_would_mislabel_are_refused_by_index(case: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    content, needles = ARRAY_CASES[case](tmp_path)
    path = tmp_path / "d.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.savez(path, **content, allow_pickle=True)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "arrays", "--data-dir", str(path), "--model", "resnet8",
                 "--epochs", "1", "--out", str(out)]) == 2
    line = one_line_error(capsys, *needles)
    assert "allow_pickle" not in line and "pickle.load" not in line
    assert not out.exists()


def test_one_hot_rows_and_16_bit_pixels_still_train(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    from resnetkit.data.arrays import as_images, as_labels

    x, y = _arrays()
    assert as_labels(np.eye(4)[y], 40, "y").tolist() == y.tolist()
    assert as_labels(np.eye(4, dtype=bool)[y], 40, "y").tolist() == y.tolist()
    wide = (x.astype(np.int64) * 1600 // 255).astype(np.uint16)  # 0..1600, as in the case reported
    with pytest.warns(UserWarning, match=r"integer pixels in \d+..1600, beyond 0..255: scaled by 255/1600"):
        got = as_images(wide, "x")
    assert int(got.max()) == 255 and len(np.unique(got.numpy())) > 200  # not 7 grey levels
    path = tmp_path / "wide.npz"
    np.savez(path, x_train=wide, y_train=y)
    assert main(["train", "--dataset", "arrays", "--data-dir", str(path), "--model", "resnet8",
                 "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "scaled by" in line]
    assert len(warnings) == 1 and warnings[0].startswith("resnetkit: warning:")


# ------------------------------------------------------------------ CSV: paths confined, no label guessed
def _csv_folder(tmp: Path, extra: list[str], encoding: str = "utf-8") -> Path:
    root = write_class_folders(tmp / "data" / "img", {"a": 12, "b": 12}, sizes=(16, 17))
    rows = ["path,label"] + [f"img/{c}/{i:04d}.png,{c}" for c in "ab" for i in range(12)]
    write_class_folders(tmp / "other", {"x": 1}, sizes=(16, 17))
    csv_path = root.parent / "labels.csv"
    csv_path.write_bytes(("\n".join(rows + extra) + "\n").encode(encoding))
    return csv_path


CSV_CASES = {  # extra rows, flags, exit status, what the one line says
    "dot-dot": (["../../../etc/passwd,a"], [], 2, ("1 row(s)", "lead outside its folder", "line 26",
                                                     "--allow-outside")),
    "absolute": (["/etc/passwd,b"], [], 2, ("/etc/passwd", "lead outside its folder")),
    "sibling": (["../other/x/0000.png,a"], [], 2, ("../other/x/0000.png", "lead outside")),
    "repeat-strict": (["img/a/0000.png,a"], ["--strict"], 2, ("listed more than once", "img/a/0000.png (lines 2, 26)",
                                                               "drop --strict")),
    "clash-strict": (["img/a/0001.png,b"], ["--strict"], 2, ("given different labels", "line 3: a, line 26: b")),
    "latin-1": (["img/a/0002.png,caf\u00e9"], [], 2, ("not UTF-8", "save it as UTF-8")),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_csv_rows_stay_in_their_folder_and_keep_one_label(case: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    extra, flags, status, needles = CSV_CASES[case]
    csv_path = _csv_folder(tmp_path, extra, "latin-1" if case == "latin-1" else "utf-8")
    out = tmp_path / "run"
    argv = ["train", "--dataset", "csv", "--data-dir", str(csv_path), "--model", "resnet8", "--img-size", "16",
            "--epochs", "1", "--batch-size", "8", *flags, "--out", str(out)]
    assert main(argv) == status
    one_line_error(capsys, *needles)
    assert not out.exists()


def test_csv_outside_rows_with_allow_outside_and_repeats_warn_once(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from resnetkit.config import RunConfig
    from resnetkit.data.csvfile import index_csv

    csv_path = _csv_folder(tmp_path, ["../other/x/0000.png,a", "img/a/0000.png,a", "./img/a/0000.png,a",
                                      "img/b/0001.png,a"])
    with pytest.warns(UserWarning) as caught:
        index = index_csv(RunConfig(dataset="csv", data_dir=str(csv_path), allow_outside=True))
    said = [str(w.message) for w in caught]
    assert len(said) == 2, said
    assert "1 image(s)" in said[0] and "listed more than once" in said[0] and "kept once" in said[0]
    assert "img/b/0001.png (line 15: b, line 29: a)" in said[1] and "no label is guessed" in said[1]
    files = index.train.files
    assert files.count("img/a/0000.png") == 1 and "img/b/0001.png" not in files  # dropped, not guessed
    assert "../other/x/0000.png" in files
    # data check lists them instead of stopping
    tolerant = index_csv(RunConfig(dataset="csv", data_dir=str(csv_path)), tolerant=True)
    assert any("outside the CSV's folder" in p for p in tolerant.problems)
    assert "../other/x/0000.png" not in tolerant.train.files


# ------------------------------------------------------------------ image folders: skip, then split
def test_unreadable_images_take_no_validation_slot(tmp_path: Path) -> None:
    from resnetkit.config import RunConfig
    from resnetkit.data import build_loaders

    root = write_class_folders(tmp_path / "photos", {"a": 15, "b": 15}, sizes=(16, 17))
    for i in range(4):
        (root / "b" / f"broken{i}.png").write_bytes(b"not a png")
    cfg = RunConfig(dataset="imagefolder", data_dir=str(root), model="resnet8", img_size=16, batch_size=8)
    with pytest.warns(UserWarning, match="skipped 4 unreadable image"):
        loaders = build_loaders(cfg, "cpu")
    counts = torch.bincount(loaders.val.labels, minlength=2).tolist()
    assert counts == [3, 3]  # 0.2 of 15 readable images per class
    assert loaders.train.num_samples == 24


# ------------------------------------------------------------------ one line per error, for every command
def _cfg_file(tmp: Path, text: str) -> list[str]:
    (tmp / "c.json").write_text(text)
    return ["--config", str(tmp / "c.json")]


def _full_disk(mp: pytest.MonkeyPatch, which: str) -> None:
    """The write of ``which`` fails as it does on a full disk, in the writer's own words."""
    from resnetkit import checkpoint as ck

    if which == "safetensors":
        from safetensors import SafetensorError

        def save_file(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
            Path(filename).write_bytes(b"part")  # safetensors 0.4's wording of ENOSPC
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        mp.setattr(ck, "save_file", save_file)
    else:
        import resnetkit._io as io_mod

        def save(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
            Path(f).write_bytes(b"part")  # torch.save's C++ writer hides the errno
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

        mp.setattr(ck.torch, "save", save)
        mp.setattr(io_mod, "LOW_SPACE", 1 << 62)  # the disk reads as full


GENERAL_CASES: dict[str, tuple[Callable[[Path, Path, pytest.MonkeyPatch], list[str]], int, tuple[str, ...]]] = {
    "config-model-int": (lambda t, r, mp: ["train", *_cfg_file(t, '{"model": 5}'), "--out", str(t / "x")], 2,
                         ("c.json", "wrong type(s): model=5 (expected text")),
    "config-dataset-int": (lambda t, r, mp: ["train", *_cfg_file(t, '{"dataset": 7}'), "--dry-run"], 2,
                           ("dataset=7 (expected text)",)),
    "config-model-args-int": (lambda t, r, mp: ["lr-find", *_cfg_file(t, '{"model_args": 3}'), "--dry-run"], 2,
                              ("model_args=3 (expected a mapping",)),
    "config-epochs-float": (lambda t, r, mp: ["train", *_cfg_file(t, '{"epochs": 1.5}'), "--dry-run"], 2,
                            ("epochs=1.5 (expected a whole number",)),
    "densenet-small": (lambda t, r, mp: ["train", "--model", "densenet121", "--epochs", "1", "--out", str(t / "x")],
                       2, ("densenet121 takes inputs of at least 29x29 px", "got 8x8", "--img-size 29")),
    "densenet-progressive": (lambda t, r, mp: ["train", "--model", "densenet121", "--img-size", "32",
                                               "--min-img-size", "16", "--epochs", "1", "--dry-run"],
                             2, ("got 16x16", "--min-img-size 29")),
    "summary-small": (lambda t, r, mp: ["summary", "densenet121", "--input-size", "3,16,16"], 2,
                      ("at least 29x29 px", "--input-size 29")),
    "summary-huge": (lambda t, r, mp: ["summary", "resnet50", "--input-size", "3,100000,100000"], 2,
                     ("resnet50 at 3x100000x100000", "GiB of activations", "smaller --input-size")),
    "train-huge": (lambda t, r, mp: ["train", "--img-size", "100000", "--epochs", "1", "--dry-run"], 2,
                   ("GiB of activations", "smaller --img-size or --batch-size")),
    "lr-find-inf": (lambda t, r, mp: ["lr-find", "--end-lr", "inf", "--out", str(t / "x")], 2, ("finite",)),
    "lr-find-steps": (lambda t, r, mp: ["lr-find", "--num-iter", "100000000", "--out", str(t / "x")], 2,
                      ("--num-iter must be 17 to 10,000",)),
    "accum-steps": (lambda t, r, mp: ["train", *DIGITS, "--accum-steps", "1000", "--out", str(t / "x")], 2,
                    ("effective batch of 128,000 images", "more than the 270 training images", "--accum-steps 3")),
    "workers": (lambda t, r, mp: ["train", *DIGITS, "--workers", "-3", "--out", str(t / "x")], 2, ("--workers",)),
    "nproc": (lambda t, r, mp: ["train", *DIGITS, "--nproc", "512", "--batch-size", "512", "--out", str(t / "x")],
              2, ("--nproc 512: this machine has", "or fewer")),
    "nproc-batch": (lambda t, r, mp: ["train", "--nproc", "100", "--batch-size", "64", "--out", str(t / "x")], 2,
                    ("a multiple of 100, e.g. 100",)),
    "export-atol-nan": (lambda t, r, mp: ["export", str(r), "--format", "torchscript", "--atol", "nan",
                                          "--out", str(t / "m.ts")], 2, ("--atol", "finite")),
    "degradation-1-epoch": (lambda t, r, mp: ["experiment", "degradation", "--epochs", "1", "--out", str(t / "x")],
                            2, ("at least 2 epochs",)),
    "degradation-depths": (lambda t, r, mp: ["experiment", "degradation", "--depths", "-4,20", "--out", str(t / "x")],
                           2, ("no plain/residual CIFAR net of depth -4", "valid depths")),
    "h5-not-hdf5": (lambda t, r, mp: (t / "d.h5").write_bytes(b"\x00" * 64) and  # type: ignore[func-returns-value]
                    ["train", "--dataset", "arrays", "--data-dir", str(t / "d.h5"), "--out", str(t / "x")], 2,
                    ("not an HDF5 file",)),
    "enospc-safetensors": (lambda t, r, mp: _full_disk(mp, "safetensors") or  # type: ignore[func-returns-value]
                           ["train", *DIGITS, "--out", str(t / "x")], 2,
                           ("best.safetensors: No space left on device; nothing was written",)),
    "enospc-state": (lambda t, r, mp: _full_disk(mp, "torch") or  # type: ignore[func-returns-value]
                     ["train", *DIGITS, "--out", str(t / "x")], 2,
                     ("state.pt: No space left on device",)),
}


@pytest.mark.parametrize("case", list(GENERAL_CASES))
def test_every_command_says_one_line(case: str, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("h5py") if case == "h5-not-hdf5" else None
    make, status, needles = GENERAL_CASES[case]
    argv = make(tmp_path, run, monkeypatch)
    capsys.readouterr()
    assert main(argv) == status
    line = one_line_error(capsys, *needles)
    assert "allow_pickle" not in line
    assert not (tmp_path / "m.ts").exists()
    if case == "nproc-batch":
        assert line.endswith("e.g. 100")  # not "e.g. 100 or 100"
    if case.startswith("enospc"):
        assert not [p for p in (tmp_path / "x").iterdir() if p.name.endswith(".tmp")]


def test_a_legacy_pickle_with_code_says_it_holds_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import pickle

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    weights = tmp_path / "w.pth"
    weights.write_bytes(pickle.dumps({"fc.weight": Evil()}, protocol=4))  # "Unsupported operand 149"
    assert main(["train", *DIGITS, "--model", "resnet18", "--pretrained", str(weights),
                 "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "unpickling it would run code (posix.system", "not loaded")
    folder = tmp_path / "resume"
    folder.mkdir()
    assert main(["train", *DIGITS, "--out", str(folder / "tmp")]) == 0
    shutil.copytree(folder / "tmp", folder / "run")
    (folder / "run" / ckpt.STATE).write_bytes(weights.read_bytes())
    capsys.readouterr()
    assert main(["train", "--resume", str(folder / "run")]) == 2
    one_line_error(capsys, "holds pickled code", "was not loaded")
    assert not (tmp_path / "pwned").exists()


def test_divergence_names_only_a_checkpoint_that_exists(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import re

    for lr in ("1e6", "1e3", "50"):
        out = tmp_path / f"lr{lr}"
        status = main(["train", *DIGITS, "--epochs", "3", "--lr", lr, "--precision", "fp32", "--out", str(out)])
        if status == 0:
            continue  # this lr did not diverge here
        line = one_line_error(capsys, "lower --lr")
        named = re.search(r"the last good checkpoint is (\S+) \(epoch (\d+)\)", line)
        if named:
            assert Path(named.group(1)).is_file()
            assert ckpt.recorded_epoch(named.group(1)) == int(named.group(2))
        else:
            assert "no checkpoint was written yet" in line and not (out / ckpt.LAST).exists()


def test_lr_find_dry_run_writes_nothing_and_takes_no_run_flags(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from resnetkit.cli import lr_find as cli_lr_find
    from resnetkit.training import lr_find

    out = tmp_path / "lrf"
    assert main(["lr-find", "--model", "resnet8", "--num-iter", "50", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "over 50 steps" in printed and "nothing run (--dry-run)" in printed and not out.exists()
    assert cli_lr_find.UNUSED_KEYS == lr_find.UNUSED_KEYS
    for flag in ("--tensorboard", "--early-stop", "--time-budget", "--tta", "--ema", "--eval-every"):
        with pytest.raises(SystemExit):
            main(["lr-find", flag, "3", "--dry-run"])
        assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(ckpt.UserError, match="lr-find takes no tensorboard"):
        lr_find.lr_find(tensorboard=True, out=str(out))
    # a config file shared with train: its run keys are dropped with a note
    (tmp_path / "c.json").write_text('{"model": "resnet8", "time_budget": "1m", "early_stop": 3}')
    assert main(["lr-find", "--config", str(tmp_path / "c.json"), "--dry-run", "--out", str(out)]) == 0
    assert "lr-find ignores early_stop, time_budget" in capsys.readouterr().err


def test_degradation_is_inconclusive_when_the_nets_did_not_train() -> None:
    from resnetkit.experiments import degradation

    def net(name: str, err: float) -> degradation.NetRun:
        kind, depth = name.rstrip("0123456789"), int(name.lstrip("plainresnet"))
        return degradation.NetRun(name, kind, depth, Path(name), [{"train_acc": 1 - err}], 1, 1.0,
                                  train_images=1000)

    v = degradation.verdict([net("plain20", 0.79), net("plain56", 0.86), net("resnet20", 0.80), net("resnet56", 0.78)])
    assert not v["reproduced"] and v["inconclusive"]
    assert v["message"].startswith("inconclusive: the nets did not train (error > 50%")
    # a deep plain net that fails to train while the others train is the degradation itself
    v = degradation.verdict([net("plain20", 0.10), net("plain56", 0.60), net("resnet20", 0.09), net("resnet56", 0.07)])
    assert v["reproduced"] and not v["inconclusive"]
    assert degradation.preset("cpu", epochs=2).warmup_epochs == 1.0  # the preset's 1 epoch fits
    assert degradation.preset("cpu", epochs=2, lr=0.1).epochs == 2


def test_plots_draw_cjk_class_names_without_a_warning_per_glyph(tmp_path: Path) -> None:
    import warnings

    import numpy as np

    from resnetkit import report

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph is a UserWarning from matplotlib
        report.plot_confusion(np.eye(3, dtype=int) * 4, ["猫", "犬", "鳥"], tmp_path / "cm.png")
    labels, font, note = report.tick_labels(["猫", "犬"])
    assert (labels == ["猫", "犬"] and font) or (labels == ["0", "1"] and note == " (class index)")
    assert report.tick_labels(["cat", "dog"]) == (["cat", "dog"], {}, "")
    assert (tmp_path / "cm.png").read_bytes().startswith(b"\x89PNG")


# ------------------------------------------------------------------ float arrays that are not pixels
def test_float_arrays_that_are_not_pixels_train_on_their_own_statistics(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    from resnetkit.data.arrays import as_images

    rng = np.random.default_rng(0)
    y = np.arange(240) % 3
    x = rng.normal(0.0, 1.0, (240, 1, 8, 8)).astype(np.float32)
    x[:, :, :4] += (y[:, None, None, None] - 1.0) * 4.0  # the class is in the top half
    x = x * 30.0 - 5.0  # standardised measurements on another scale: -150..150, not pixels
    with pytest.warns(UserWarning, match="not pixels .* kept as float32"):
        kept = as_images(x, "x")
    assert kept.dtype == torch.float32 and torch.allclose(kept / 255.0, torch.from_numpy(x), atol=1e-4)
    path = tmp_path / "values.npz"
    np.savez(path, x_train=x, y_train=y)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "arrays", "--data-dir", str(path), "--model", "resnet8",
                 "--epochs", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "not pixels" in line]) == 1
    spec = ckpt.load_checkpoint(out).spec  # the values' own statistics, in their own units
    assert spec.mean[0] == pytest.approx(float(x.mean()), abs=0.5)
    assert spec.std[0] == pytest.approx(float(x.std()), rel=0.05)
    assert json.loads((out / "report.json").read_text())["top1"] > 0.5  # it learned from the values
    for flags, says in ((["--img-size", "16"], "train at their own size 8x8"),
                        (["--augment", "randaugment"], "edits pixels")):
        assert main(["train", "--dataset", "arrays", "--data-dir", str(path), "--model", "resnet8",
                     "--epochs", "1", *flags, "--out", str(tmp_path / "refused")]) == 2
        one_line_error(capsys, says)
