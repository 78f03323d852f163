"""Real Redis servers on loopback for tests: a 3-master Redis Cluster, or one private server.

Both run Debian's ``redis-server`` in a temporary directory on free ports, so a test can
stop, kill and restart them without touching the shared Redis other tests use. Tests
that need them skip (never fail) when ``redis-server``/``redis-cli`` are not installed;
``.ci/run`` installs them.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_lib

from app.services import REDIS_DECODING
from tests.helpers.processes import free_port


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 55535)
        if _port_is_free(port) and _port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def redis_binaries_missing() -> str | None:
    """Why real-server tests cannot run here, or None when they can."""
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


@dataclass
class RedisServer:
    """One redis-server process with its own directory and port; restartable in place."""

    workdir: Path
    port: int = field(default_factory=free_port)
    options: tuple[str, ...] = ()
    popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart, on the same port and directory) and wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.workdir), "--logfile", str(self.log_path),
            "--save", "", "--protected-mode", "no", *self.options,
        ]
        self.popen = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT)
        client = redis_lib.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"redis-server exited:\n{self._log()}")
                try:
                    # LOADING while the AOF is read back: wait for it to finish.
                    if client.ping() and client.info("persistence").get("loading") == 0:
                        return self
                except (redis_lib.ConnectionError, redis_lib.BusyLoadingError):
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server did not answer on port {self.port}:\n{self._log()}")

    def kill(self) -> None:
        """SIGKILL: what a crash or a pulled plug does (the AOF keeps what was fsynced)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def pause(self) -> None:
        """SIGSTOP: a hung server that keeps its connections open but answers nothing."""
        if self.popen is not None:
            self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.popen is not None:
            self.popen.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Terminate politely (SIGTERM), killing it if it does not stop in time."""
        if self.popen is not None and self.popen.poll() is None:
            self.resume()  # a paused server cannot act on SIGTERM
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class RedisCluster:
    """Three cluster-enabled masters, no replicas, joined by ``redis-cli --cluster create``."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """The REDIS_URL the relay takes for a cluster: any one node is enough to start."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def client(self) -> redis_lib.RedisCluster:
        return redis_lib.RedisCluster(host="127.0.0.1", port=self.nodes[0].port,
                                      **REDIS_DECODING)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_state(port: int) -> str:
    client = redis_lib.Redis(port=port, decode_responses=True, socket_connect_timeout=0.5)
    try:
        return str(client.cluster("info").get("cluster_state"))
    finally:
        client.close()


@contextmanager
def running_cluster(
    workdir: Path, masters: int = 3, timeout: float = 20.0
) -> Iterator[RedisCluster]:
    """Start a Redis Cluster of ``masters`` nodes, yield it once every slot is served, stop it."""
    nodes = [
        RedisServer(workdir / f"node-{index}", port=cluster_port(),
                    options=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                             "--cluster-node-timeout", "2000", "--appendonly", "no"))
        for index in range(masters)
    ]
    cluster = RedisCluster(nodes)
    try:
        for node in nodes:
            node.start()
        create = subprocess.run(
            ["redis-cli", "--cluster", "create",
             *[f"127.0.0.1:{node.port}" for node in nodes],
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if create.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}"
            )
        deadline = time.monotonic() + timeout
        while not all(_cluster_state(node.port) == "ok" for node in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield cluster
    finally:
        cluster.stop()


@contextmanager
def running_server(workdir: Path, *options: str) -> Iterator[RedisServer]:
    """One private redis-server (e.g. ``"--appendonly", "yes"``), stopped afterwards."""
    server = RedisServer(workdir, options=options)
    try:
        yield server.start()
    finally:
        server.stop()
