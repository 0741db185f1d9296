"""report.html in a real headless browser (Debian's Chromium, installed here where missing): it
renders without script errors, the summary is there, every plot is laid out as an SVG whose
points carry hover titles, and tables sort by a click on a header."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from attnbench.report.document import write_report

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no Chromium here, and no root apt-get to install Debian's package")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ):
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if proc.returncode != 0:
            pytest.skip(f"could not install Chromium ({' '.join(cmd)}): {proc.stderr[-300:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed no chromium binary")
    return found


@pytest.fixture(scope="module")
def page(report_run, tmp_path_factory):
    """report.html of the session's stored run (tests/report/conftest.py: op, model, quality and
    recall rows, so every kind of plot), written again into a copy."""
    run_dir = tmp_path_factory.mktemp("html") / "run"
    shutil.copytree(report_run, run_dir)
    return write_report(run_dir)["html"]


def _browser(page: Path, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # a headless browser, on the session's stored run (a suite with training)
def test_report_renders_in_a_browser_with_summary_and_plots(page, tmp_path):
    html = page.read_text()
    assert not re.search(r'(src|href)="https?:|url\(https?:|@import', html)  # nothing fetched
    svgs = html.count('<figure class="plot"')
    assert svgs >= 3 and html.count("<title>") > 10  # plots inline, points with hover titles
    dom = _browser(
        page,
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
        tmp=tmp_path,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not errors, errors
    assert 'data-summary="yes"' in dom.stdout
    assert f'data-plots="{svgs}"' in dom.stdout  # every plot laid out with a real size
    assert 'id="summary"' in dom.stdout and "sort by this column" in dom.stdout
    shot = tmp_path / "report.png"
    _browser(page, "--window-size=1280,3000", f"--screenshot={shot}", tmp=tmp_path)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 3000 and pixels.std() > 0.05  # a page, not a blank
