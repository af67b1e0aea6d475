"""The project installs as a package: its metadata agrees with requirements.txt, the console
script runs from anywhere, and no code edits ``sys.path`` or ``PYTHONPATH`` to find the package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_lines(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return {line for line in lines if line}


def normalized(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", requirement.lower()).replace(" ", "")


def test_requirements_files_list_what_pyproject_installs():
    """requirements.txt (for ``pip install -r``) is the package with every extra; the test file, the test extra."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    everything = set(PYPROJECT["project"]["dependencies"])
    [every_extra] = extras["all"]  # llm-caption[transformers,serve,...]: the extras "all" names
    for name in every_extra.split("[", 1)[1].rstrip("]").split(","):
        everything |= set(extras[name])
    assert {normalized(r) for r in requirement_lines(REPO_ROOT / "requirements.txt")} == {
        normalized(r) for r in everything
    }
    test_only = {r for r in extras["test"] if not r.startswith("llm-caption")}
    assert {normalized(r) for r in requirement_lines(REPO_ROOT / "requirements-test.txt")} == {
        normalized(r) for r in test_only
    }


@pytest.mark.slow
def test_console_script_runs_from_any_directory(tmp_path):
    script = Path(sys.executable).parent / "llm-caption"
    assert script.is_file(), "the project is not installed in this environment (scripts/setup.sh does it)"
    done = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: llm-caption")
    assert "--batch-size" in done.stdout


def test_package_imports_from_any_directory_without_bmf_or_torch(tmp_path):
    """``import videocaption`` is light: the facade loads BMF and torch only when a run needs them."""
    code = "import sys, videocaption; print(videocaption.__file__); print('bmf' in sys.modules, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    location, heavy = done.stdout.splitlines()
    assert Path(location).resolve().is_relative_to(REPO_ROOT / "videocaption")
    assert heavy == "False False"


def test_no_code_edits_the_import_path():
    sources = [
        *REPO_ROOT.glob("*.py"),
        *(REPO_ROOT / "videocaption").rglob("*.py"),
        *(REPO_ROOT / "benchmarks").rglob("*.py"),
    ]
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in sources
        if re.search(r"sys\.path\.(insert|append)|PYTHONPATH", path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


@pytest.mark.slow
def test_wheel_holds_the_package_the_module_file_and_the_console_script(tmp_path):
    """What ``pip install .`` installs elsewhere: every subpackage, ``llm_caption.py`` for BMF, the script."""
    source = tmp_path / "source"  # setuptools builds in the source tree: build a copy, not the checkout
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "tests", "build", "*.egg-info", "__pycache__", "results"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("llm_caption-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "llm_caption.py" in names
    assert "videocaption/schemas/events.schema.json" in names  # --events reads it from the package
    for package in (REPO_ROOT / "videocaption").rglob("__init__.py"):
        assert str(package.relative_to(REPO_ROOT)) in names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "llm-caption = videocaption.cli:run" in zipfile.ZipFile(wheel).read(entry_points).decode()
