"""A 3-member etcd cluster whose first member lives in a network namespace of its own, so that a test can
cut it off from its peers while its clients still reach it (a minority partition, as Jepsen makes them).

The member in the namespace has two links to the root namespace, each a veth pair with a /30 of its own:
one carries raft traffic to and from the other members, the other carries its clients. Taking the peer
link's namespace end down is the partition: the member and the clients that talk to it go on as before,
but no raft message crosses. (Taking down the root end instead would let the kernel route the packets out
through the default route.) Every name and address is the test's own; deleting the namespace removes its
links, and the root ends with them. Needs root and iproute2's ``ip``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
from itertools import count

from distlock_async.testing.servers import EtcdCluster, EtcdServer

_names = count()

#: iproute2's ``ip``, also where root's PATH is not set (``/usr/sbin`` missing).
IP = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)


def _ip(*args: str) -> None:
    assert IP is not None
    subprocess.run([IP, *args], check=True, capture_output=True, text=True, timeout=30)


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or ``None``."""
    if os.geteuid() != 0:
        return "needs root for network namespaces (ip netns); run as root for tier 2"
    if IP is None:
        return "needs iproute2's ip for network namespaces (as root: apt-get install iproute2)"
    return None


class Namespace:
    """A network namespace linked to the root namespace by a peer link and a client link."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}x{next(_names)}"  # interface names: at most 15 characters
        self.name = f"{_PREFIX}{tag}"
        self.peer_root, self.peer_inner = f"dlp{tag}r", f"dlp{tag}n"
        self.client_root, self.client_inner = f"dlc{tag}r", f"dlc{tag}n"
        net = _free_subnet()
        hosts = list(net.hosts())  # a /29: the peer link takes .1/.2, the client link .5/.6
        self.peer_root_ip, self.peer_inner_ip = str(hosts[0]), str(hosts[1])
        self.client_root_ip, self.client_inner_ip = str(hosts[4]), str(hosts[5])
        self.created = False

    def create(self) -> None:
        _sweep()
        _ip("netns", "add", self.name)
        self.created = True
        _ip("-n", self.name, "link", "set", "lo", "up")
        for root, inner, root_ip, inner_ip in (
            (self.peer_root, self.peer_inner, self.peer_root_ip, self.peer_inner_ip),
            (self.client_root, self.client_inner, self.client_root_ip, self.client_inner_ip),
        ):
            _ip("link", "add", root, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", self.name)
            _ip("addr", "add", f"{root_ip}/30", "dev", root)
            _ip("-n", self.name, "addr", "add", f"{inner_ip}/30", "dev", inner)
            _ip("link", "set", root, "up")
            _ip("-n", self.name, "link", "set", inner, "up")

    def cut(self) -> None:
        """Partition: no raft traffic between the member inside and the others; clients unaffected."""
        _ip("-n", self.name, "link", "set", self.peer_inner, "down")

    def heal(self) -> None:
        _ip("-n", self.name, "link", "set", self.peer_inner, "up")

    def cleanup(self) -> None:
        """Delete the namespace (its links and their root ends go with it); whatever is left, by name."""
        if self.created:
            with contextlib.suppress(subprocess.SubprocessError):
                _ip("netns", "delete", self.name)
        for link in (self.peer_root, self.client_root):
            if os.path.exists(f"/sys/class/net/{link}"):
                with contextlib.suppress(subprocess.SubprocessError):
                    _ip("link", "delete", link)


_PREFIX = "distlock-test-"


def _sweep() -> None:
    """Delete the namespaces of test processes that are gone (killed before their finalizers ran)."""
    assert IP is not None
    listed = subprocess.run([IP, "netns", "list"], check=True, capture_output=True, text=True).stdout
    for name in (line.split()[0] for line in listed.splitlines() if line.startswith(_PREFIX)):
        pid = name[len(_PREFIX) :].split("x")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(subprocess.SubprocessError):
                _ip("netns", "delete", name)


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /29 in 10.0.0.0/8 that no interface here has an address in."""
    assert IP is not None
    taken = subprocess.run([IP, "-o", "-4", "addr", "show"], check=True, capture_output=True, text=True).stdout
    used = [ipaddress.ip_interface(word).network for word in taken.split() if "/" in word and word[0].isdigit()]
    rng = random.Random()
    for _ in range(1000):
        net = ipaddress.IPv4Network((rng.randrange(10 << 24, 11 << 24, 8), 29))
        if not any(net.overlaps(other) for other in used):
            return net
    raise RuntimeError("no free /29 in 10.0.0.0/8")


class Member(EtcdServer):
    """An etcd member whose peer and client URLs use the given addresses, run in ``netns`` if given."""

    def __init__(self, member: str, peer_ip: str, client_ip: str, netns: str | None = None) -> None:
        self.peer_ip = peer_ip  # before EtcdServer's __init__, which reads peer_url
        self.host = client_ip
        self.netns = netns
        super().__init__(member)

    @property
    def peer_url(self) -> str:
        return f"http://{self.peer_ip}:{self.peer_port}"

    def command(self) -> list[str]:
        if self.netns is None:
            return super().command()
        assert IP is not None
        return [IP, "netns", "exec", self.netns, *super().command()]


class PartitionableCluster(EtcdCluster):
    """Three members; the first in ``namespace``, the others in the root namespace on the peer link's
    root address (raft) and loopback (clients)."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        inside = Member("m1", namespace.peer_inner_ip, namespace.client_inner_ip, netns=namespace.name)
        outside = [Member(f"m{n}", namespace.peer_root_ip, "127.0.0.1") for n in (2, 3)]
        super().__init__(members=[inside, *outside])

    @property
    def isolated(self) -> Member:
        member = self.members[0]
        assert isinstance(member, Member)
        return member
