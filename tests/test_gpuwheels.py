"""attnbench.gpuwheels without the network: the offline install from a folder (a tiny wheel built
here), the skip when the folder is missing, the size cap, the download's pip command, and the
table of what cannot be carried."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from attnbench import gpuwheels

ROOT = Path(__file__).resolve().parents[1]


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(
    folder: Path, name: str = "tinypkg", version: str = "0.0.0", files: dict[str, str] | None = None
) -> Path:
    """A minimal pure-Python wheel, written by hand."""
    files = files if files is not None else {f"{name}/__init__.py": "VALUE = 42\n"}
    info = f"{name}-{version}.dist-info"
    members = {path: text.encode() for path, text in files.items()}
    members[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    ).encode()
    members[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [_record_line(p, d) for p, d in members.items()] + [f"{info}/RECORD,,"]
    members[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def test_install_skips_a_missing_or_empty_folder(tmp_path):
    got = gpuwheels.install(tmp_path / "absent", tmp_path / "site")
    assert set(got) == {"skipped"} and "absent" in got["skipped"]
    (tmp_path / "empty").mkdir()
    got = gpuwheels.install(tmp_path / "empty", tmp_path / "site")
    assert set(got) == {"skipped"} and "no wheels" in got["skipped"]
    assert not (tmp_path / "site").exists()


def test_install_puts_a_wheel_in_the_target_and_it_imports_from_there(tmp_path):
    wheel = make_wheel(tmp_path / "whl")
    make_wheel(
        tmp_path / "whl",
        "nvidia_fake",
        "1.0",
        {"nvidia/__init__.py": "", "nvidia/fake/__init__.py": "X = 1\n"},
    )
    target = tmp_path / "site"
    path_before = list(sys.path)
    got = gpuwheels.install(tmp_path / "whl", target)
    assert got == {
        "installed": sorted([wheel.name, "nvidia_fake-1.0-py3-none-any.whl"]),
        "target": str(target),
    }
    assert sys.path == path_before  # the caller puts the target on the path
    assert (target / "tinypkg" / "__init__.py").is_file()
    # the shared top-level folder is left a namespace package, so it cannot shadow the machine's
    assert not (target / "nvidia" / "__init__.py").exists()
    env = gpuwheels.environ(target, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert env["PYTHONPATH"] == str(target)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tinypkg, nvidia.fake; print(tinypkg.VALUE, tinypkg.__file__, nvidia.fake.X)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    value, where, x = proc.stdout.split()
    assert value == "42" and x == "1" and Path(where).is_relative_to(target)


def test_install_failure_raises_with_pips_stderr(tmp_path):
    (tmp_path / "whl").mkdir()
    (tmp_path / "whl" / "broken-0.0.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="pip install of 1 wheels") as err:
        gpuwheels.install(tmp_path / "whl", tmp_path / "site")
    assert "broken" in str(err.value)


def test_check_size_names_the_sizes_over_the_cap(tmp_path):
    small, big = tmp_path / "a-1-py3-none-any.whl", tmp_path / "b-1-py3-none-any.whl"
    small.write_bytes(b"x" * 2**20)
    big.write_bytes(b"x" * 3 * 2**20)
    assert gpuwheels.check_size([small, big], cap_mib=5) == 4 * 2**20
    with pytest.raises(ValueError, match=r"4\.0 MiB, over the cap of 3 MiB") as err:
        gpuwheels.check_size([small, big], cap_mib=3)
    assert "a-1-py3-none-any.whl: 1.0 MiB" in str(err.value)
    assert "b-1-py3-none-any.whl: 3.0 MiB" in str(err.value)


def _fake_pip(files: dict[str, int], seen: list):
    """Stands in for subprocess.run: writes wheel files of the given sizes into -d's folder."""

    def run(cmd, **kwargs):
        seen.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        for name, size in files.items():
            with open(dest / name, "wb") as f:
                f.truncate(size)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def _names(big: int = 1000) -> dict[str, int]:
    return {
        "fla_core-0.6.0-py3-none-any.whl": 1000,
        "xformers-0.0.35-py39-none-manylinux_2_28_x86_64.whl": big,
        "nvidia_cuda_runtime_cu12-12.8.90-py3-none-manylinux2014_x86_64"
        ".manylinux_2_17_x86_64.whl": 1000,
    }


def test_download_runs_pip_with_the_pins_and_flags_and_drops_other_versions(tmp_path, monkeypatch):
    seen: list = []
    monkeypatch.setattr(gpuwheels.subprocess, "run", _fake_pip(_names(), seen))
    dest = tmp_path / "whl"
    dest.mkdir()
    (dest / "xformers-0.0.34-cp39-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"old")
    (dest / "other-1.0-py3-none-any.whl").write_bytes(b"someone else's")
    got = gpuwheels.download(dest)
    assert sorted(p.name for p in got) == sorted(_names())
    assert not (dest / "xformers-0.0.34-cp39-abi3-manylinux_2_28_x86_64.whl").exists()
    assert (dest / "other-1.0-py3-none-any.whl").exists()
    (cmd,) = seen
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    for flag in ("--no-deps", "--only-binary=:all:"):
        assert flag in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert cmd[cmd.index("--implementation") + 1] == "cp"
    platforms = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
    assert platforms == list(gpuwheels.PLATFORMS) and "manylinux_2_28_x86_64" in platforms
    assert {"fla-core==0.6.0", "xformers==0.0.35", "nvidia-cuda-runtime-cu12==12.8.90"} <= set(cmd)


def test_download_over_the_cap_raises_naming_the_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(gpuwheels.subprocess, "run", _fake_pip(_names(big=41 * 2**20), []))
    with pytest.raises(ValueError, match="over the cap of 40 MiB") as err:
        gpuwheels.download(tmp_path / "whl")
    assert "xformers-0.0.35-py39-none-manylinux_2_28_x86_64.whl: 41.0 MiB" in str(err.value)


def test_download_reports_pips_failure(tmp_path, monkeypatch):
    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(gpuwheels.subprocess, "run", run)
    with pytest.raises(RuntimeError, match="No matching distribution"):
        gpuwheels.download(tmp_path / "whl")


def test_the_table_names_what_cannot_be_carried_and_why():
    assert {w.name for w in gpuwheels.CARRIED} == {
        "fla-core",
        "xformers",
        "nvidia-cuda-runtime-cu12",
    }
    assert all(w.version and w.why for w in gpuwheels.CARRIED)
    assert set(gpuwheels.NOT_CARRIED) == {"flash-attn", "flash_attn_3"}
    assert "nvcc" in gpuwheels.NOT_CARRIED["flash-attn"]
    assert "sdist" in gpuwheels.NOT_CARRIED["flash-attn"]
    assert "not on PyPI" in gpuwheels.NOT_CARRIED["flash_attn_3"]
    assert "hopper/" in gpuwheels.NOT_CARRIED["flash_attn_3"]


def test_runs_as_a_file_without_torch_and_imports_no_torch():
    """``make gpu-wheels`` runs the file with a plain python3 (no torch there)."""
    script = str(ROOT / "attnbench" / "gpuwheels.py")
    code = (
        "import runpy, sys\n"
        "sys.argv = ['gpuwheels.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "download" in proc.stdout and "install" in proc.stdout
