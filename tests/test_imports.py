"""Imports run one way (docs/architecture.md): light modules stay light, the CLI answers --help
without torch, and the few imports made inside functions each say why."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import resnetkit
from resnetkit.cli import COMMANDS

PACKAGE = Path(resnetkit.__file__).parent
# Of resnetkit modules, inside functions: one lazy dispatch per command (the public API loads
# through one importlib table in __init__.py).
MAX_LOCAL_IMPORTS = 15


def loaded_modules(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return set(out.split())


def imported_by_cli(args: list[str]) -> set[str]:
    """Every module ``python -m resnetkit ARGS`` imports, from ``-X importtime``'s report."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "resnetkit", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()  # it answered
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", proc.stderr, re.MULTILINE))


def test_checkpoint_module_does_not_load_the_trainer() -> None:
    loaded = loaded_modules("import resnetkit.checkpoint")
    assert "resnetkit.checkpoint" in loaded
    assert not {m for m in loaded if m.startswith(("resnetkit.training", "resnetkit.cli"))}
    assert "torch.distributed.run" not in loaded


def test_evaluate_command_does_not_load_the_trainer() -> None:
    # what `resnetkit evaluate` imports: its parser module, then its run()'s lazy imports
    loaded = loaded_modules("import resnetkit.cli.evaluate\nfrom resnetkit import checkpoint, evaluation, report")
    assert {"resnetkit.evaluation", "resnetkit.steps"} <= loaded
    assert "resnetkit.training.trainer" not in loaded
    assert not {m for m in loaded if m.startswith("resnetkit.training")}


@pytest.mark.parametrize("args", [["--version"], ["--help"], *([name, "--help"] for name in COMMANDS)],
                         ids=lambda a: " ".join(a))
def test_cli_answers_help_without_importing_torch(args: list[str]) -> None:
    modules = imported_by_cli(args)
    assert "resnetkit.cli" in modules  # the report is read right
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


def local_imports() -> list[tuple[str, int, str]]:
    """(file, line, source) of each import of a resnetkit module inside a function."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for func in ast.walk(ast.parse(source)):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                own = (isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("resnetkit"))
                       or isinstance(node, ast.Import) and any(a.name.startswith("resnetkit") for a in node.names))
                if own:
                    found.append((str(path.relative_to(PACKAGE)), node.lineno, lines[node.lineno - 1]))
    return found


def test_few_function_local_imports_each_with_its_reason() -> None:
    found = local_imports()
    assert len(found) <= MAX_LOCAL_IMPORTS, "\n".join(f"{f}:{n}: {s}" for f, n, s in found)
    unexplained = [f"{f}:{n}: {s}" for f, n, s in found if "#" not in s]
    assert not unexplained, "a function-local import needs a one-line reason:\n" + "\n".join(unexplained)
