"""The launcher's handle on a worker process (``python -m attnbench.bench.worker``, whose side is
``worker.py``): started with two pipes, asked one request at a time, killed at a timeout and
restarted after a crash, which becomes a ``timeout`` or ``crash`` status rather than an
exception."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


class Worker:
    """A worker process and its pipes; restarted after a crash or a timeout."""

    def __init__(self, init: dict[str, Any], env: dict[str, str]):
        self.init = init
        self.env = env
        self.proc = None
        self.conn = None
        self.send_conn = None
        self.threads = None
        self.startup_s = 0.0  # every start of this worker (the first and the restarts)
        self.starts = 0

    def start(self) -> None:
        """Start ``python -m attnbench.bench.worker`` with two pipes (never re-imports the
        caller's ``__main__``, unlike multiprocessing's spawn)."""
        t0 = time.time()
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = {**os.environ, **self.env}
        root = str(Path(__file__).resolve().parents[2])  # a source checkout that is not installed
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attnbench.bench.worker", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.conn = Connection(from_child_r, writable=False)
        self.send_conn.send(self.init)
        if not self.conn.poll(300):
            self.kill()
            raise RuntimeError("the benchmark worker did not start within 300 s")
        try:
            hello = self.conn.recv()
        except EOFError:
            code = self.proc.wait()
            raise RuntimeError(f"the benchmark worker failed to start (exit code {code})") from None
        self.threads = hello["threads"]
        self.startup_s += time.time() - t0
        self.starts += 1

    def ask(self, kind: str, payload: Any, timeout: float) -> dict[str, Any]:
        """Send one request; a row-like dict back, or a timeout/crash status."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.send_conn.send((kind, payload))
            if self.conn.poll(timeout):
                return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return self._crashed()
        if self.proc.poll() is not None:
            return self._crashed()
        self.kill()
        return {"status": "timeout", "reason": f"still running after {timeout:g} s; worker killed"}

    def _crashed(self) -> dict[str, Any]:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._close()
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            why = f"worker process killed by signal {name}"
        else:
            why = f"worker process exited with code {code}"
        return {"status": "crash", "reason": why}

    def _close(self) -> None:
        for c in (self.conn, self.send_conn):
            if c is not None:
                c.close()
        self.conn = self.send_conn = None
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self._close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.send_conn.send(("stop", None))
                self.proc.wait(10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
