"""The documentation's examples, checked against the code so that they cannot rot.

- Every ``resnetkit ...`` command in a code block of README.md and docs/*.md names a real
  sub-command, and each of its flags exists, exactly spelled, in that sub-command's argparse
  parser (``resnetkit.cli.build_parser``); the whole line must parse. Parsing only: nothing runs.
- The walkthroughs (a bash block preceded by ``<!-- test: NAME [TOY FLAGS] -->``) run end to end
  in ``tmp_path`` on tiny data that the test makes there, with the toy flags appended to each
  ``train`` and ``finetune`` command (slow).
- Python blocks run: those preceded by ``<!-- test: skip -->`` never, ``<!-- test: slow -->``
  in the slow test, the others in the fast one.

No test downloads: pretrained weights are a torchvision-shaped state_dict put in torch's hub
cache, as tests/test_finetune.py does.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from resnetkit.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
TEST_MARK = re.compile(r"<!--\s*test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")


# ------------------------------------------------------------------ reading the docs
@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    mark: str | None  # the text of a `<!-- test: ... -->` comment just above the block

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        start, lang, body = i, m.group(1).lower(), []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        mark = TEST_MARK.search(lines[j]) if j >= 0 else None
        yield Block(path, start + 1, lang, "\n".join(body), mark.group(1) if mark else None)
        i += 1


def shell_lines(block: Block) -> Iterator[str]:
    """The block's logical lines (backslash continuations joined), prompts stripped; in a text
    block only the lines that show a prompt (`$ resnetkit ...`) are commands."""
    prompt_only = block.lang not in SHELL
    joined = block.text.replace("\\\n", " ")
    for raw in joined.splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        elif prompt_only:
            continue
        if line:
            yield line


def resnetkit_argv(line: str, env: dict[str, str]) -> list[str] | None:
    """The arguments after ``resnetkit`` (or ``python -m resnetkit``, ``torchrun ... -m
    resnetkit``) in one shell line, with ``$VAR``s of the block expanded; None for other lines."""
    for name, value in env.items():
        line = line.replace(f"${name}", value)
    try:
        words = shlex.split(line, comments=True)
    except ValueError as e:
        raise AssertionError(f"cannot split {line!r}: {e}") from e
    for i, w in enumerate(words):
        if w == "resnetkit" and (i == 0 or words[i - 1] == "-m"):
            return words[i + 1:]
    return None


def commands(block: Block) -> Iterator[list[str]]:
    env: dict[str, str] = {}
    for line in shell_lines(block):
        assign = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line)
        if assign:
            env[assign.group(1)] = " ".join(shlex.split(assign.group(2)))
            continue
        for part in re.split(r"\s(?:&&|;)\s", line):
            argv = resnetkit_argv(part, env)
            if argv is not None:
                yield argv


def all_commands() -> list[tuple[str, list[str]]]:
    return [(b.where, argv) for path in DOCS for b in blocks(path) for argv in commands(b)]


# ------------------------------------------------------------------ the parsers
def subparser_of(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub-)sub-command's parser that ``argv`` ends in, and the command's words."""
    path: list[str] = []
    rest = list(argv)
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        words = [w for w in rest if not w.startswith("-")]
        if not subs or not words or words[0] not in subs[0].choices:
            return parser, path
        path.append(words[0])
        parser = subs[0].choices[words[0]]
        rest = rest[rest.index(words[0]) + 1:]


def flag_problems(argv: list[str], *, parse: bool = True) -> list[str]:
    """What is wrong with ``resnetkit ARGV``: an unknown sub-command, a flag its parser lacks
    (exactly spelled: argparse would accept an abbreviation), and with ``parse`` whatever makes
    argparse refuse the whole line (a bad choice, a missing argument)."""
    if argv in (["--version"], ["--help"], []):
        return []
    parser, path = subparser_of(build_parser(), argv)
    if not path:
        return [f"no sub-command in {argv}"]
    known = {s for a in parser._actions for s in a.option_strings}
    problems = []
    for word in argv:
        if word == "--":
            break
        if word.startswith("--") and word.split("=", 1)[0] not in known:
            problems.append(f"`resnetkit {' '.join(path)}` has no flag {word.split('=', 1)[0]}")
    if not parse:
        return problems
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            if e.code:
                problems.append(err.getvalue().strip().splitlines()[-1])
    return problems


INLINE = re.compile(r"(?<!`)`((?:python -m )?resnetkit [^`]+)`(?!`)")


def inline_commands() -> list[tuple[str, list[str]]]:
    """``resnetkit ...`` in inline code outside code blocks, e.g. in a table. These often hold
    placeholders (``resnetkit COMMAND --help``, ``--nproc N``), so only their sub-command, where
    it is spelled out, and their flags are checked."""
    found = []
    for path in DOCS:
        text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
        for m in INLINE.finditer(text):
            argv = resnetkit_argv(m.group(1), {})
            if argv and re.fullmatch(r"[a-z][a-z-]*", argv[0]):
                found.append((f"{path.relative_to(ROOT)} (inline)", argv))
    return found


COMMANDS = all_commands()
INLINE_COMMANDS = inline_commands()


def test_the_docs_hold_commands() -> None:
    assert len(COMMANDS) >= 50, COMMANDS  # the reader below finds them: no silent skip
    names = {argv[0] for _, argv in COMMANDS if argv}
    assert {"train", "predict", "export", "finetune", "evaluate", "report"} <= names


def test_every_documented_command_parses() -> None:
    bad = [f"{where}: resnetkit {shlex.join(argv)}: {p}" for where, argv in COMMANDS for p in flag_problems(argv)]
    assert not bad, "\n".join(bad)


def test_every_inline_command_has_its_flags() -> None:
    assert len(INLINE_COMMANDS) >= 10, INLINE_COMMANDS
    bad = [f"{where}: resnetkit {shlex.join(argv)}: {p}" for where, argv in INLINE_COMMANDS
           for p in flag_problems(argv, parse=False)]
    assert not bad, "\n".join(bad)


def test_the_flag_check_catches_mistakes() -> None:
    assert flag_problems(["train", "--epoch", "3"])  # an abbreviation argparse would accept
    assert flag_problems(["train", "--no-such-flag"])
    assert flag_problems(["trian"])
    assert flag_problems(["data", "check", "mnist", "--lr", "0.1"])
    assert not flag_problems(["data", "check", "arrays", "--data-dir", "x.npz", "--keys", "X,Y"])
    block = Block(ROOT / "README.md", 1, "bash", 'A="--seed 0"\nresnetkit train $A \\\n  --epochs 2  # c', None)
    assert list(commands(block)) == [["train", "--seed", "0", "--epochs", "2"]]


# ------------------------------------------------------------------ python snippets
def python_blocks(kind: str) -> list[Block]:
    out = []
    for path in DOCS:
        for b in blocks(path):
            if b.lang != "python" or b.mark == "skip":
                continue
            if (b.mark == "slow") == (kind == "slow"):
                out.append(b)
    return out


def run_python(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = compile(block.text, block.where, "exec")
    exec(code, {"__name__": "__docs__"})  # noqa: S102 - the docs' own examples


@pytest.mark.parametrize("block", python_blocks("fast"), ids=lambda b: b.where)
def test_python_snippet(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_python(block, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("block", python_blocks("slow"), ids=lambda b: b.where)
def test_python_snippet_slow(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_python(block, tmp_path, monkeypatch)


# ------------------------------------------------------------------ walkthroughs
TOY_COMMANDS = {"train", "finetune"}


def walkthroughs() -> dict[str, tuple[Block, list[str]]]:
    found: dict[str, tuple[Block, list[str]]] = {}
    for path in DOCS:
        for b in blocks(path):
            if b.lang in SHELL and b.mark and b.mark not in ("skip", "slow"):
                name, *toy = shlex.split(b.mark)
                assert name not in found, f"walkthrough {name} twice: {b.where}, {found[name][0].where}"
                found[name] = (b, toy)
    return found


WALKTHROUGHS = walkthroughs()
EXPECTED = ("quickstart", "photos", "signs", "finetune", "predict", "export")


def test_every_walkthrough_is_marked() -> None:
    assert sorted(WALKTHROUGHS) == sorted(EXPECTED)


def _photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import write_class_folders

    write_class_folders(tmp_path / "photos", {"cat": 8, "dog": 8, "fox": 8}, ext=".jpg", sizes=(28, 40))


def _signs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from PIL import Image

    h5py = pytest.importorskip("h5py")
    folder = tmp_path / "datasets"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n, prefix in (("train_signs.h5", 36, "train"), ("test_signs.h5", 12, "test")):
        with h5py.File(folder / name, "w") as f:
            f["list_classes"] = np.arange(6)
            f[f"{prefix}_set_x"] = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
            f[f"{prefix}_set_y"] = np.arange(n) % 6
    Image.fromarray(rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)).save(tmp_path / "my_hand.jpg")


def _finetune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from conftest import R18_FILE, distinctive_state_dict

    _photos(tmp_path, monkeypatch)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(distinctive_state_dict("resnet18"), hub / "checkpoints" / R18_FILE)  # what imagenet finds
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def offline(*args: object, **kwargs: object) -> None:
        raise AssertionError("a walkthrough must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


def _digit_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trained digits run in runs/digits, and 8x8 digit images to predict on."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from resnetkit.cli import main

    assert main(["train", "--out", "runs/digits", "--epochs", "1", "--subset", "200"]) == 0
    images = load_digits().images
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        img = Image.fromarray((images[i] * 255 / 16).astype("uint8")).resize((32, 32))
        img.save(tmp_path / ("digit.png" if i == 0 else f"imgs/d{i}.png"))


SETUP: dict[str, Callable[[Path, pytest.MonkeyPatch], None]] = {
    "quickstart": lambda tmp_path, monkeypatch: None,
    "photos": _photos,
    "signs": _signs,
    "finetune": _finetune,
    "predict": _digit_images,
    "export": _digit_images,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_walkthrough(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    from resnetkit.cli import main

    block, toy = WALKTHROUGHS[name]
    monkeypatch.chdir(tmp_path)
    SETUP[name](tmp_path, monkeypatch)
    ran = 0
    for argv in commands(block):
        argv = argv + toy if argv[0] in TOY_COMMANDS else argv
        rc = main(argv)
        out = capsys.readouterr()
        assert rc == 0, f"{block.where}: resnetkit {shlex.join(argv)} exited {rc}\n{out.out[-2000:]}\n{out.err[-2000:]}"
        ran += 1
    assert ran >= 2, f"{block.where}: a walkthrough of {ran} command(s)"


# ------------------------------------------------------------------ quoted benchmark numbers
def table_under(path: Path, heading: str, column: str) -> list[str]:
    """The cells of ``column`` in the first table after ``heading``."""
    text = path.read_text(encoding="utf-8").split(heading, 1)[1]
    rows = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    rows = rows[2:]
    end = next((i for i, line in enumerate(text.splitlines()) if line.startswith("## ")), None)
    body = text.splitlines()[:end] if end else text.splitlines()
    rows = [r for r in rows if r in body]
    return [[c.strip() for c in r.strip("|").split("|")][head.index(column)] for r in rows]


def measured_text() -> str:
    """BENCHMARKS.md's sections, the history page and the degradation page: where a quoted number
    must come from."""
    bench = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8").split("## The sections", 1)[1]
    pages = ("benchmarks-history.md", "degradation.md")
    return bench + "".join((ROOT / "docs" / p).read_text(encoding="utf-8") for p in pages)


@pytest.mark.parametrize("where", [("BENCHMARKS.md", "## Verdict", "result"), ("README.md", "## Results", "result")],
                         ids=lambda w: w[0])
def test_quoted_results_match_the_measurements(where: tuple[str, str, str]) -> None:
    """A hand-written summary quotes numbers that a rerun of `make bench` may change: each one
    must still be found where it was measured."""
    path, heading, column = where
    cells = table_under(ROOT / path, heading, column)
    assert len(cells) >= 5
    source = measured_text()
    missing = [f"{n} (in {cell!r})" for cell in cells
               for n in re.findall(r"\d[\d,]*\.\d+|\d{2,}[\d,]*", cell) if n not in source]
    assert not missing, f"{path} quotes numbers found in no measurement: " + "; ".join(missing)


def test_benchmark_sections_keep_their_markers() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    for name in ("tta", "throughput", "allocator", "bench", "inference", "compute", "own-data"):
        assert text.count(f"<!-- {name}:start -->") == 1 and text.count(f"<!-- {name}:end -->") == 1, name
    assert text.index("## Verdict") < text.index("<!-- tta:start -->")
