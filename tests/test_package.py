"""The package as a user installs it: ``pip install .`` (not editable) into a fresh virtual
environment, then the command line from an empty folder; no top-level ``variants`` module."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a fresh venv, pip install, and the smoke suite from it


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with attnbench installed from a copy of the source tree; its dependencies are
    the test environment's own (torch is large), visible through a .pth file."""
    base = tmp_path_factory.mktemp("pkg")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the test environment's packages (torch, pandas, ...) behind the venv's own
    deps = [p for p in site.getsitepackages() if Path(p).exists()]
    (Path(purelib) / "test_deps.pth").write_text("\n".join(deps) + "\n")
    src = base / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "results", "__pycache__", "*.egg-info", ".pytest_cache", "build"
        ),
    )
    # the build backend (setuptools) comes from the package index, as for any user
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--no-deps", str(src)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    empty = base / "empty"
    empty.mkdir()
    return venv, empty


def _run(venv, cwd, *args, timeout=600):
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_installed_package_lists_and_runs_the_smoke_suite_from_an_empty_folder(installed):
    venv, empty = installed
    where = _run(
        venv,
        empty,
        "python",
        "-c",
        "import attnbench, attnbench.variants;"
        "print(attnbench.__file__); print(attnbench.variants.__file__)",
    )
    assert where.returncode == 0, where.stderr
    assert all("site-packages" in line for line in where.stdout.split()), where.stdout
    listed = _run(venv, empty, "attnbench", "list")
    assert listed.returncode == 0, listed.stderr
    assert "sliding_window.blocked" in listed.stdout and "run here" in listed.stdout
    run = _run(
        venv,
        empty,
        "attnbench",
        "run",
        "--suite",
        "smoke",
        "--out",
        str(empty / "runs"),
        "--budget",
        "0.02",
        "--quiet",
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "run folder:" in run.stdout and "(ok 36)" in run.stdout


def test_no_top_level_variants_module_is_installed(installed):
    venv, empty = installed
    proc = _run(venv, empty, "python", "-c", "import variants")
    assert proc.returncode != 0 and "No module named 'variants'" in proc.stderr
    # and a folder called `variants` in the user's working directory is not picked up instead
    (empty / "variants").mkdir(exist_ok=True)
    (empty / "variants" / "__init__.py").write_text("raise SystemExit('the wrong variants')\n")
    listed = _run(
        venv, empty, "python", "-c", "import attnbench; print(len(attnbench.variant_names()))"
    )
    assert listed.returncode == 0 and int(listed.stdout) > 30, listed.stderr
