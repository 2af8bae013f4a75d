"""The import-linter contracts in pyproject.toml: a new import circle inside a package fails them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "actors", "tuning", "cluster")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], check=False, cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "demo_weights"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed beside this Python")
@pytest.mark.parametrize(("module", "planted", "package"), [
    ("pipeline/core/diskfull.py", "from pipeline.core import write  # noqa", "pipeline.core"),
    ("pipeline/edits/state.py", "from pipeline.edits import buffer  # noqa", "pipeline.edits"),
])
def test_a_planted_import_circle_breaks_the_acyclic_contract(tmp_path, module, planted, package):
    root = copy_tree(tmp_path)
    assert lint_imports(root).returncode == 0, "the tree as it is keeps every contract"
    target = root / module
    target.write_text(target.read_text() + f"\n\ndef _planted() -> None:\n    {planted}\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "No import cycles among the modules of each package BROKEN" in result.stdout
    assert f"No cycles are allowed in {package}." in result.stdout
