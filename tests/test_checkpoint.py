"""Checkpoints: self-describing safetensors, unwrapped weights, and no pickle ever executed."""
from __future__ import annotations

import builtins
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from resnetkit import create_model
from resnetkit.cli import main
from resnetkit.specs import DatasetSpec
from resnetkit.errors import UserError
from resnetkit import checkpoint as ckpt

SPEC = DatasetSpec("digits", tuple(str(i) for i in range(10)), 1, 8, (0.3054,), (0.3760,))
ARGS = {"num_classes": 10, "in_chans": 1}


def save_tiny(path: Path, model: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = model if model is not None else create_model("resnet8", **ARGS)
    ckpt.save_checkpoint(path, model, arch="resnet8", model_args=ARGS, spec=SPEC,
                         config={"model": "resnet8", "dataset": "digits"}, metrics={"epoch": 3, "test_acc": 0.5})
    return model


def test_roundtrip_gives_the_same_model_and_every_metadata_key(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = save_tiny(path).eval()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert set(meta) == {"format_version", *ckpt.JSON_KEYS}
    assert meta["format_version"] == "1"
    assert all(isinstance(json.loads(v), object) for v in meta.values())  # every value is JSON

    loaded = ckpt.load_checkpoint(path)
    assert not loaded.model.training
    assert loaded.arch == "resnet8" and loaded.model_args == ARGS and loaded.spec == SPEC
    assert loaded.classes == list(SPEC.classes) and loaded.metrics["epoch"] == 3
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))


def test_a_run_folder_means_its_best_checkpoint(tmp_path: Path) -> None:
    save_tiny(tmp_path / "last.safetensors")
    assert ckpt.resolve_checkpoint_path(tmp_path).name == "last.safetensors"
    save_tiny(tmp_path / "best.safetensors")
    assert ckpt.load_checkpoint(tmp_path).path.name == "best.safetensors"
    with pytest.raises(UserError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no best.safetensors or last.safetensors"):
        ckpt.load_checkpoint(tmp_path / "empty")


def test_wrappers_are_stripped_before_saving(tmp_path: Path) -> None:
    model = create_model("resnet8", **ARGS)
    for wrapped in (torch.compile(model), nn.DataParallel(model), torch.compile(nn.DataParallel(model))):
        assert ckpt.unwrap_model(wrapped) is model
        path = tmp_path / "w.safetensors"
        save_tiny(path, wrapped)
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
        assert keys == set(model.state_dict())
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys)


def test_files_that_are_not_resnetkit_checkpoints_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UserError, match="format_version"):
        ckpt.load_checkpoint(plain)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a safetensors checkpoint"):
        ckpt.load_checkpoint(text)
    wrong = tmp_path / "wrong.safetensors"
    save_tiny(wrong)
    meta_model = create_model("resnet8", num_classes=3, in_chans=1)
    ckpt.save_checkpoint(wrong, meta_model, arch="resnet8", model_args=ARGS, spec=SPEC, config={}, metrics={})
    with pytest.raises(UserError, match="do not fit"):
        ckpt.load_checkpoint(wrong)


class Payload:
    """Unpickling this creates a marker file: stands for os.system and friends."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def evil_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    zipped = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "model": Payload(marker)}, zipped)
    raw = tmp_path / "evil-raw.pt"
    raw.write_bytes(pickle.dumps({"epoch": 1, "model": Payload(marker)}))
    assert not marker.exists()
    return {"zip": zipped, "raw": raw}


@pytest.mark.parametrize("kind", ["zip", "raw"])
def test_a_malicious_pickle_is_never_run(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    evil = evil_files(tmp_path, marker)[kind]
    # as a resume state
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "resnet8", "epochs": 1}))
    (run / "state.pt").write_bytes(evil.read_bytes())
    assert main(["train", "--resume", str(run)]) == 2
    assert "refusing to resume" in capsys.readouterr().err
    # as a checkpoint given to evaluate and predict, by name or disguised as best.safetensors
    (run / "best.safetensors").write_bytes(evil.read_bytes())
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    for argv in (["evaluate", str(evil)], ["predict", str(evil), str(img)], ["evaluate", str(run)]):
        assert main(argv) == 2
        assert "not a safetensors checkpoint" in capsys.readouterr().err
    with pytest.raises(UserError):
        ckpt.load_state(evil)
    assert not marker.exists()


def test_resume_state_roundtrip_uses_weights_only(tmp_path: Path) -> None:
    state = {"epoch": 2, "model": {"w": torch.ones(3)}, "rng": {"python": (3, tuple(range(5)), None)},
             "history": [{"epoch": 1, "test_acc": 0.5}]}
    ckpt.save_state(tmp_path / "state.pt", state)
    back = ckpt.load_state(tmp_path / "state.pt")
    assert back["epoch"] == 2 and torch.equal(back["model"]["w"], torch.ones(3))
    assert back["history"] == state["history"]


def damaged_states(tmp_path: Path) -> dict[str, bytes]:
    """Files a kill, a full disk or a stray write could leave as state.pt."""
    good = tmp_path / "good.pt"
    ckpt.save_state(good, {"epoch": 2, "model": {"w": torch.ones(64)}, "history": []})
    data = good.read_bytes()
    return {"junk": b"junk", "empty": b"", "truncated": data[: len(data) // 2], "cut-tail": data[:-30],
            "text": b"hello world\n" * 10, "zeros": b"\0" * 100, "protocol-only": b"\x80\x05junk",
            "a-list": pickle.dumps([1, 2], protocol=2)}


@pytest.mark.parametrize("kind", ["junk", "empty", "truncated", "cut-tail", "text", "zeros",
                                  "protocol-only", "a-list"])
def test_a_damaged_resume_state_is_one_clear_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "run" / "state.pt"
    path.parent.mkdir()
    path.write_bytes(damaged_states(tmp_path)[kind])
    save_tiny(path.parent / "last.safetensors")
    with pytest.raises(UserError) as e:
        ckpt.load_state(path)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and str(path) in message and "not a readable resume state" in message
    assert "last.safetensors are separate files and are not touched" in message
    assert "start a new run with another --out" in message and "weights_only=False" not in message


def test_resume_from_a_garbage_state_is_refused_without_a_traceback(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "resnet8", "epochs": 1, "subset": 200}))
    (run / "state.pt").write_bytes(b"junk")  # struct.error inside the unpickler
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetkit: error: refusing to resume from") and len(err.strip().splitlines()) == 1
    assert (run / "state.pt").read_bytes() == b"junk"  # nothing rewritten
