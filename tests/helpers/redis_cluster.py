"""Real Redis servers on loopback for tests: a 3-master Redis Cluster, or one private server.

Both run Debian's ``redis-server`` in a temporary directory on free ports, so a test can
stop, kill and restart them without touching the shared Redis other tests use. Tests
that need them skip (never fail) when ``redis-server``/``redis-cli`` are not installed;
``.ci/run`` installs them.

A cluster may have replicas (``running_cluster(..., replicas=1)``: one per master), so a
test can find the master that holds a key (:meth:`RedisCluster.master_of_key`), SIGKILL it
(:meth:`RedisCluster.kill_master`) and wait for its replica to take over
(:meth:`RedisCluster.wait_for_failover`).
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

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

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


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES`` as a node sees the cluster."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # a replica's master; None for a master
    slots: tuple[tuple[int, int], ...]  # inclusive ranges served (masters only)

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool({"fail", "fail?"} & self.flags)

    def serves(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def _parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    views = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@", 1)[0]
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        views.append(ClusterNodeView(
            node_id=parts[0], port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(parts[2].split(",")),
            master_id=None if parts[3] == "-" else parts[3], slots=tuple(slots),
        ))
    return views


def _node_client(port: int) -> redis_lib.Redis:
    return redis_lib.Redis(port=port, decode_responses=True, socket_connect_timeout=0.5,
                           socket_timeout=2.0)


@dataclass
class RedisCluster:
    """Cluster-enabled masters (and their replicas), joined by ``redis-cli --cluster create``.

    ``nodes`` keeps the order they were started in; which of them is a master changes
    with a failover, so ask :meth:`masters` / :meth:`master_of_key` rather than assume.
    """

    nodes: list[RedisServer]
    # master port -> its replicas' ports when it was killed (kill_master)
    _former_replicas: dict[int, set[int]] = field(default_factory=dict)

    @property
    def live_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.alive]

    @property
    def url(self) -> str:
        """The REDIS_URL the relay takes for a cluster: any one node is enough to start."""
        return f"redis+cluster://127.0.0.1:{self._any_live().port}"

    def client(self) -> redis_lib.RedisCluster:
        return redis_lib.RedisCluster(host="127.0.0.1", port=self._any_live().port,
                                      **REDIS_DECODING)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def _any_live(self) -> RedisServer:
        live = self.live_nodes
        if not live:
            raise RuntimeError("no node of the cluster is running")
        return live[0]

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def view(self, seen_from: RedisServer | None = None) -> list[ClusterNodeView]:
        """``CLUSTER NODES`` as one live node (the first, unless told) sees it."""
        client = _node_client((seen_from or self._any_live()).port)
        try:
            return _parse_cluster_nodes(str(client.execute_command("CLUSTER", "NODES")))
        finally:
            client.close()

    def masters(self) -> list[RedisServer]:
        """The running nodes that serve slots now, as the cluster sees it."""
        return [self.node(view.port) for view in self.view()
                if view.is_master and view.slots and not view.failed
                and self.node(view.port).alive]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The running replicas in sync with ``master``, as the master itself tells."""
        client = _node_client(master.port)
        try:
            info = client.info("replication")
        finally:
            client.close()
        ports = [int(value["port"]) for key, value in info.items()
                 if key.startswith("slave") and isinstance(value, dict)
                 and value.get("state") == "online"]
        return [self.node(port) for port in ports if self.node(port).alive]

    def keyslot(self, key: str) -> int:
        client = _node_client(self._any_live().port)
        try:
            return int(client.execute_command("CLUSTER", "KEYSLOT", key))
        finally:
            client.close()

    def master_of_slot(self, slot: int) -> RedisServer:
        """The node that serves ``slot`` now (a failed one too, until its failover)."""
        view = next(view for view in self.view() if view.is_master and view.serves(slot))
        return self.node(view.port)

    def master_of_key(self, key: str) -> RedisServer:
        """The master that holds ``key`` (e.g. one queue shard): kill it for a failover."""
        return self.master_of_slot(self.keyslot(key))

    def replication_lag_bytes(self, master: RedisServer) -> int | None:
        """How many bytes of ``master``'s replication stream its most-behind replica has
        not processed yet, asked of the replicas themselves (what the master's INFO says
        of them is their last ack, up to a second old); None without a replica. What a
        SIGKILL at this moment would lose."""
        replicas = self.replicas_of(master)
        if not replicas:
            return None
        client = _node_client(master.port)
        try:
            offset = int(client.info("replication")["master_repl_offset"])
        finally:
            client.close()
        behind = []
        for replica in replicas:
            client = _node_client(replica.port)
            try:
                behind.append(offset - int(client.info("replication")["slave_repl_offset"]))
            finally:
                client.close()
        return max(0, *behind)

    def wait_until_ok(self, timeout: float = 20.0) -> None:
        """Wait until every running node says cluster_state:ok, knows every running node,
        and every running replica's link to its master is up (its first sync done)."""
        deadline = time.monotonic() + timeout
        while not self._settled():
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok with every "
                                   "replica in sync")
            time.sleep(0.1)

    def _settled(self) -> bool:
        live = self.live_nodes
        try:
            roles = {node.port: self._role(node) for node in live}
            replicas = {port for port, role in roles.items() if role == "slave"}
            for node in live:
                client = _node_client(node.port)
                try:
                    info = client.cluster("info")
                    if info.get("cluster_state") != "ok":
                        return False
                    if int(info.get("cluster_known_nodes", 0)) < len(live):
                        return False
                    if roles[node.port] == "slave" and client.info("replication").get(
                            "master_link_status") != "up":
                        return False
                finally:
                    client.close()
                # Gossip has told this node which of the others replicate whom.
                seen = {view.port for view in self.view(node) if view.master_id}
                if not replicas <= seen:
                    return False
        except redis_lib.RedisError:
            return False
        return True

    @staticmethod
    def _role(node: RedisServer) -> str:
        client = _node_client(node.port)
        try:
            return str(client.execute_command("ROLE")[0])
        finally:
            client.close()

    def wait_for_failover(self, killed: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until a replica of the ``killed`` master (see :meth:`kill_master`) serves
        its slots and every running node says cluster_state:ok; return that replica."""
        candidates = self._former_replicas.get(killed.port, set())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                views = {view.port: view for view in self.view()}
                promoted = [port for port in candidates
                            if port in views and views[port].is_master and views[port].slots
                            and not views[port].failed]
                done = (bool(promoted) and not views[killed.port].slots
                        and all(_cluster_state(node.port) == "ok" for node in self.live_nodes))
            except (redis_lib.RedisError, KeyError):
                done = False
            if done:
                return self.node(promoted[0])
            time.sleep(0.05)
        raise RuntimeError(f"no replica took over from the master on port {killed.port}")

    def kill_master(self, master: RedisServer) -> list[RedisServer]:
        """SIGKILL ``master`` (a crash); return its replicas, one of which takes over."""
        replicas = self.replicas_of(master)
        self._former_replicas[master.port] = {replica.port for replica in replicas}
        master.kill()
        return replicas



def _cluster_state(port: int) -> str:
    client = redis_lib.Redis(port=port, decode_responses=True, socket_connect_timeout=0.5)
    try:
        return str(client.cluster("info").get("cluster_state"))
    finally:
        client.close()


@contextmanager
def running_cluster(
    workdir: Path, masters: int = 3, timeout: float = 20.0, replicas: int = 0,
    node_timeout_ms: int = 2000,
) -> Iterator[RedisCluster]:
    """Start a Redis Cluster of ``masters`` nodes, each with ``replicas`` replicas, yield it
    once every slot is served (and every replica has synced), stop it.

    ``node_timeout_ms`` is ``cluster-node-timeout``: how long a master may not answer
    before the others count it failed and its replica is promoted.
    """
    nodes = [
        RedisServer(workdir / f"node-{index}", port=cluster_port(),
                    options=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                             "--cluster-node-timeout", str(node_timeout_ms),
                             "--appendonly", "no",
                             # A replica's first sync starts at once, not after 5 s.
                             "--repl-diskless-sync-delay", "0"))
        for index in range(masters * (1 + replicas))
    ]
    cluster = RedisCluster(nodes)
    try:
        for node in nodes:
            node.start()
        create = subprocess.run(
            ["redis-cli", "--cluster", "create",
             *[f"127.0.0.1:{node.port}" for node in nodes],
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if create.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}"
            )
        cluster.wait_until_ok(timeout)
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
