"""Start the Procfile's processes for real, as an operator would, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]


def procfile_commands() -> dict[str, str]:
    """The Procfile's process types and their commands."""
    commands = {}
    for line in (REPO_ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    """One running process and where its output goes."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process group and wait; SIGKILL if it does not stop in time."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


@dataclass
class Deployment:
    """The Procfile's processes started with one environment."""

    env: dict[str, str]
    workdir: Path
    port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, kind: str) -> Process:
        """Run the Procfile line of this kind with bash, exactly as written."""
        command = procfile_commands()[kind]
        log_path = self.workdir / f"{kind}-{len(self.processes)}.log"
        env = {**self.env, "PORT": str(self.port)}
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(kind, popen, log_path)
        self.processes.append(process)
        return process

    def wait_until_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # still booting, or busy
                pass
            for process in self.processes:
                if process.popen.poll() is not None:
                    raise RuntimeError(f"{process.name} exited:\n{process.output()}")
            time.sleep(0.1)
        raise RuntimeError("the web process did not become healthy:\n"
                           + "\n".join(p.output() for p in self.processes))

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def process_env(extra: dict[str, str]) -> dict[str, str]:
    """A clean environment with the venv's scripts on PATH and the given variables."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def cli_available() -> bool:
    return shutil.which("cio-relay", path=str(Path(sys.executable).parent)) is not None
