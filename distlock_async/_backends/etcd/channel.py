"""How the etcd backend reaches the cluster: the gRPC channel and its options, TLS credentials,
dialing within ``dial_timeout``, authentication, and awaiting one call.

aetcd 1.0 lacks what the locks need (sort, limit and ``max_create_revision`` on ranges, a persistent
keep-alive stream, watches that notice a member without a leader, TLS, a token renewed when etcd
rejects it), so lock operations go through its raw stubs, each with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import aetcd
import grpc
from aetcd import rpc

from ..._errors import BackendError
from ..._options import EtcdOptions
from .._compat_aetcd import credentials_of, share_token_with_watcher
from .errors import details, map_errors

__all__ = [
    "CHANNEL_OPTIONS",
    "HASLEADER",
    "authenticate",
    "channel_options",
    "dial",
    "load_credentials",
    "resolve_target",
    "unary",
]

logger = logging.getLogger("distlock_async")


#: gRPC keep-alive: a dead or hung member is noticed within about 7 s even on an idle stream. Without
#: ``ping_timeout_ms`` grpcio waits 60 s for a ping's answer; below 5 s etcd answers ``too_many_pings``.
CHANNEL_OPTIONS: dict[str, Any] = {
    # Every call picks the next connected member, as Go's client does: a member that is up but has no
    # leader (cut off in a minority) answers "no leader", and the retry goes to another member. With
    # pick_first the channel stuck to that member until the connection broke.
    "grpc.lb_policy_name": "round_robin",
    "grpc.keepalive_time_ms": 5000,
    "grpc.keepalive_timeout_ms": 2000,
    "grpc.http2.ping_timeout_ms": 2000,
    "grpc.http2.max_pings_without_data": 0,
}


#: Makes a member without a leader fail calls and streams at once instead of hanging.
HASLEADER = ("hasleader", "true")


async def resolve_target(endpoints: list[tuple[str, int]]) -> tuple[str, int]:
    """The ``(host, port)`` that aetcd joins into a gRPC target over every endpoint.

    Several endpoints need gRPC's ``ipv4:a:p,b:p`` (or ``ipv6:``) form, which takes IP literals only, so
    host names are resolved here, once (IPv4 first).
    """
    loop = asyncio.get_running_loop()
    addresses: list[tuple[int, str, int]] = []
    for host, port in endpoints:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            infos: list[Any] = []
            failure: OSError = socket.gaierror(f"no IPv4 or IPv6 address for {host!r}")
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
                except OSError as exc:
                    failure = exc
                if infos:
                    break
            if not infos:
                # Decided after both address families failed, and reported as the endpoint's, not the
                # resolver's: the resolver's last error is only the cause.
                raise BackendError(f"etcd endpoint {host}:{port}: cannot resolve {host!r}") from failure
            ip = ipaddress.ip_address(infos[0][4][0])
        addresses.append((ip.version, str(ip), port))
    versions = {version for version, _, _ in addresses}
    if len(versions) > 1:
        raise ValueError("etcd endpoints must be all IPv4 or all IPv6 (gRPC takes one address family per target)")
    if 4 in versions:
        parts = [f"{ip}:{port}" for _, ip, port in addresses]
        scheme = "ipv4"
    else:
        parts = [f"[{ip}]:{port}" for _, ip, port in addresses]
        scheme = "ipv6"
    last = parts[-1].rpartition(":")[0]
    return f"{scheme}:{','.join([*parts[:-1], last])}", addresses[-1][2]


def channel_options(options: EtcdOptions, endpoints: list[tuple[str, int]]) -> dict[str, Any]:
    """The gRPC channel arguments of a client the locker makes for ``endpoints``."""
    arguments = dict(CHANNEL_OPTIONS)
    if options.tls:
        # The target holds IP addresses (see ``resolve_target``): certificates are checked against the
        # name the user wrote instead, the same for every member.
        arguments["grpc.ssl_target_name_override"] = options.server_name or endpoints[0][0]
    return arguments


def _read_pem(name: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise BackendError(f"etcd: cannot read {name} {path!r}: {exc.strerror or exc}") from exc


def _load_credentials(options: EtcdOptions) -> grpc.ChannelCredentials:
    root = None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if options.ca_file is not None:
        root = _read_pem("ca_file", options.ca_file)
        try:
            context.load_verify_locations(cadata=root.decode("ascii"))
        except (ssl.SSLError, ValueError) as exc:  # gRPC would only say "handshake failed", later
            raise BackendError(f"etcd: ca_file {options.ca_file!r} holds no PEM certificate ({exc})") from exc
    key = chain = None
    if options.cert_file is not None and options.key_file is not None:
        chain = _read_pem("cert_file", options.cert_file)
        key = _read_pem("key_file", options.key_file)
        try:
            # The password callback refuses an encrypted key rather than let OpenSSL prompt for one.
            context.load_cert_chain(options.cert_file, options.key_file, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise BackendError(
                f"etcd: cert_file {options.cert_file!r} and key_file {options.key_file!r} are not a PEM "
                f"certificate and its unencrypted private key ({exc})"
            ) from exc
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)


async def load_credentials(options: EtcdOptions) -> grpc.ChannelCredentials | None:
    """The TLS credentials of ``options`` (``None`` without TLS), the files read and checked off the loop."""
    if not options.tls:
        await asyncio.sleep(0)
        return None
    return await asyncio.to_thread(_load_credentials, options)


async def unary(call: Any) -> Any:
    """The answer of the gRPC unary ``call``; a cancellation of the caller reaches the caller as it was sent.

    Awaited directly, a grpc.aio call that is cancelled raises a ``CancelledError`` of its own making
    (no message, no context) instead of the one the canceller sent. anyio's cancel scopes recognise
    their cancellation by its message, so they would let grpc's escape and kill the task. Waiting on a
    future of ours keeps the canceller's exception; the call is then cancelled here.
    """
    if not call.done():
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(_: object) -> None:
            if not waiter.done():
                waiter.set_result(None)

        call.add_done_callback(wake)
        try:
            await waiter
        except asyncio.CancelledError:
            call.cancel()
            raise
    return await call


async def dial(client: aetcd.Client, timeout: float, endpoints: Sequence[tuple[str, int]]) -> None:
    """Connect ``client`` (to ``endpoints``) within ``timeout`` s; fail at once when every endpoint refused."""
    with map_errors("etcd: cannot connect", describe=str):
        await client.connect()
    channel = client.channel
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = channel.get_state(try_to_connect=True)
        if state is grpc.ChannelConnectivity.READY:
            return
        left = deadline - loop.time()
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            # The state says nothing of why (refused, TLS handshake, ...): a call fails with gRPC's reason.
            with map_errors("etcd: cannot connect: no endpoint accepted the connection", describe=details):
                await unary(client.maintenancestub.Status(rpc.StatusRequest(), timeout=max(left, 0.001)))
            continue  # it connected meanwhile
        if state is grpc.ChannelConnectivity.SHUTDOWN:
            raise BackendError("etcd: cannot connect: the client is closed") from ConnectionError(
                "the gRPC channel was shut down"
            )
        if left <= 0:
            tried = ", ".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in endpoints)
            cause = TimeoutError(f"no connection to {tried} was ready within {timeout} s (last state: {state.name})")
            raise BackendError(f"etcd: cannot connect within dial_timeout ({timeout} s)") from cause
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(channel.wait_for_state_change(state), left)


async def authenticate(client: aetcd.Client, timeout: float) -> None:
    """Get a new token for the user of ``client`` within ``timeout`` s; every call sends it from then on.

    etcd forgets its tokens when it restarts, and a simple token expires after ``--auth-token-ttl``
    seconds unused (300 by default). A cluster without authentication enabled needs no token (as in Go).
    """
    credentials = credentials_of(client)
    assert credentials is not None
    username, password = credentials
    stub = client.auth_stub or rpc.AuthStub(client.channel)  # aetcd makes it only when it authenticates
    with map_errors(f"etcd: cannot authenticate as user {username!r}"):
        try:
            reply = await unary(
                stub.Authenticate(rpc.AuthenticateRequest(name=username, password=password), timeout=timeout)
            )
        except grpc.aio.AioRpcError as exc:
            # Not a failure but an answer: the cluster needs no token. Any other error the boundary reports.
            if exc.code() is not grpc.StatusCode.FAILED_PRECONDITION or "not enabled" not in (exc.details() or ""):
                raise
            logger.debug("etcd has authentication disabled: user %r sends no token", username)
            client.metadata = None
            return
    client.metadata = (("token", reply.token),)
    share_token_with_watcher(client)
