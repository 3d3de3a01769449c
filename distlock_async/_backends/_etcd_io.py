"""gRPC plumbing of the etcd backend, under aetcd's channel: deadlines, error mapping, shared streams.

aetcd 1.0 lacks what the locks need (sort, limit and ``max_create_revision`` on ranges, a persistent
keep-alive stream, watches that notice a member without a leader, TLS, a token renewed when etcd
rejects it), so lock operations go through its raw stubs, each with a deadline, and errors are mapped
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

from .._core._signal import Signal
from .._errors import BackendError
from .._options import EtcdOptions
from ._compat_aetcd import credentials_of, share_token_with_watcher

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

CLIENT_ERRORS = (grpc.RpcError, aetcd.exceptions.ClientError, OSError, asyncio.TimeoutError)


def parse_endpoints(endpoints: object) -> list[tuple[str, int]]:
    """``["host:port", ...]`` as pairs; ``TypeError``/``ValueError`` naming ``endpoints`` otherwise."""
    if isinstance(endpoints, (str, bytes)) or not isinstance(endpoints, Sequence):
        raise TypeError(f"endpoints must be a list of 'host:port' strings, not {type(endpoints).__name__}")
    if not endpoints:
        raise ValueError("endpoints must not be empty")
    parsed = []
    for endpoint in endpoints:
        if not isinstance(endpoint, str):
            raise TypeError(f"endpoints must be 'host:port' strings, not {type(endpoint).__name__}")
        host, sep, port = endpoint.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"endpoints must look like 'host:port', got {endpoint!r}")
        parsed.append((host, int(port)))
    return parsed


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
    try:
        await client.connect()
    except CLIENT_ERRORS as exc:
        raise BackendError(f"etcd: cannot connect: {exc}") from exc
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
            try:
                await unary(client.maintenancestub.Status(rpc.StatusRequest(), timeout=max(left, 0.001)))
            except CLIENT_ERRORS as exc:
                why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
                raise BackendError(f"etcd: cannot connect: no endpoint accepted the connection: {why}") from exc
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
    try:
        reply = await unary(
            stub.Authenticate(rpc.AuthenticateRequest(name=username, password=password), timeout=timeout)
        )
    except CLIENT_ERRORS as exc:
        if (
            isinstance(exc, grpc.aio.AioRpcError)
            and exc.code() is grpc.StatusCode.FAILED_PRECONDITION
            and "not enabled" in (exc.details() or "")
        ):
            logger.debug("etcd has authentication disabled: user %r sends no token", username)
            client.metadata = None
            return
        raise BackendError(f"etcd: cannot authenticate as user {username!r}: {_detail(exc)}") from exc
    client.metadata = (("token", reply.token),)
    share_token_with_watcher(client)


def is_token_rejected(exc: BaseException) -> bool:
    """etcd refused the token a call carried (expired, forgotten, outdated, or none): a new one may do."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    details = exc.details() or ""
    return any(reason in details for reason in _TOKEN_REJECTED)


#: Go's client gets a new token on these (``shouldRefreshToken``); the last means no token was sent.
_TOKEN_REJECTED = ("invalid auth token", "revision of auth store is old", "user name is empty")


def code(exc: BaseException) -> grpc.StatusCode | None:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    return None


def is_lease_not_found(exc: BaseException) -> bool:
    return (
        isinstance(exc, grpc.aio.AioRpcError)
        and exc.code() is grpc.StatusCode.NOT_FOUND
        and "lease not found" in (exc.details() or "")
    )


def is_transient(exc: BaseException) -> bool:
    """The member is gone, unreachable or without a leader: worth trying again, maybe elsewhere."""
    return code(exc) is grpc.StatusCode.UNAVAILABLE


class StreamFailed(Exception):
    """A shared stream broke under a pending request; the request may be sent again on a new stream."""


def _detail(exc: BaseException) -> str:
    return f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)


def backend_error(what: str, exc: BaseException, hint: str | None = None) -> BackendError:
    return BackendError(f"etcd {what} failed: {_detail(exc)}" + (f" ({hint})" if hint else ""))


class _Stream:
    """One long-lived bidirectional stream shared by a locker, opened on first use and after a failure.

    A writer task sends queued requests one at a time (gRPC allows one write in flight); a reader task
    hands every response to ``on_response``. When the stream fails, ``on_failure`` hears of it and the next
    ``send`` opens a new one.
    """

    def __init__(
        self,
        name: str,
        open_call: Callable[[], Any],
        on_response: Callable[[Any], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.name = name
        self._open_call = open_call
        self._on_response = on_response
        self._on_failure = on_failure
        self._call: Any = None
        self._queue: asyncio.Queue[Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def open(self) -> bool:
        return self._call is not None

    def send(self, request: Any) -> None:
        if self._call is None:
            self._call = self._open_call()
            self._queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            call, queue = self._call, self._queue
            self._tasks = [
                loop.create_task(self._write(call, queue), name=f"distlock_async: etcd {self.name} writer"),
                loop.create_task(self._read(call), name=f"distlock_async: etcd {self.name} reader"),
            ]
        assert self._queue is not None
        self._queue.put_nowait(request)

    async def _write(self, call: Any, queue: asyncio.Queue[Any]) -> None:
        try:
            while True:
                await call.write(await queue.get())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream is broken: end it, and let the reader report why
            logger.debug("etcd %s stream: write failed: %r", self.name, exc)
            call.cancel()

    async def _read(self, call: Any) -> None:
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                self._on_response(response)
                if self._call is not call:
                    return  # ``on_response`` reset the stream
            self._fail(call, ConnectionError(f"etcd closed the {self.name} stream"))
        except asyncio.CancelledError:
            if self._call is call:
                # grpc raises CancelledError from read() when the call was cancelled, not this task
                self._fail(call, ConnectionError(f"the {self.name} stream was cancelled"))
            raise
        except Exception as exc:
            self._fail(call, exc)

    def _fail(self, call: Any, exc: BaseException) -> None:
        if self._call is not call:
            return
        logger.debug("etcd %s stream failed: %r", self.name, exc)
        self._call = None
        call.cancel()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._on_failure(exc)

    def reset(self, exc: BaseException) -> None:
        """End the stream as failed (``on_failure`` hears of ``exc``); the next ``send`` opens a new one."""
        if self._call is not None:
            self._fail(self._call, exc)

    async def aclose(self) -> None:
        call, tasks = self._call, self._tasks
        self._call, self._tasks = None, []
        if call is not None:
            call.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.sleep(0)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class KeepAlives:
    """Keep-alives of any number of leases over one ``LeaseKeepAlive`` stream (aetcd opens one per call)."""

    def __init__(self, open_call: Callable[[], Any]) -> None:
        self._waiting: dict[int, list[asyncio.Future[int]]] = {}
        self._stream = _Stream("keep-alive", open_call, self._response, self._failure)

    def _response(self, response: Any) -> None:
        waiting = self._waiting.get(response.ID)
        if waiting:
            future = waiting.pop(0)
            if not future.done():
                future.set_result(int(response.TTL))

    def _failure(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    failed = StreamFailed(f"the keep-alive stream failed: {exc!r}")
                    failed.__cause__ = exc
                    future.set_exception(failed)

    async def keep_alive(self, lease_id: int, timeout: float) -> int:
        """Send one keep-alive; the lease's new TTL in seconds, ``<= 0`` if it is gone."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._waiting.setdefault(lease_id, []).append(future)
        timer = loop.call_later(timeout, _expire, future)
        try:
            self._stream.send(rpc.LeaseKeepAliveRequest(ID=lease_id))
            return await future
        except TimeoutError as exc:
            # The stream may be stuck on a hung member: start afresh next time.
            await self._stream.aclose()
            self._failure(exc)
            raise BackendError(f"etcd keep-alive got no answer within {timeout} s") from exc
        finally:
            timer.cancel()
            waiting = self._waiting.get(lease_id)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(future)
                if not waiting:
                    del self._waiting[lease_id]

    async def aclose(self) -> None:
        await self._stream.aclose()
        self._failure(ConnectionError("the locker was closed"))


class Watch:
    """One watch for the deletion of a key; ``fired`` is set on the deletion or when the stream fails."""

    __slots__ = ("fired", "id", "key")

    def __init__(self, watch_id: int, key: bytes) -> None:
        self.id = watch_id
        self.key = key
        self.fired = Signal()


#: The ``watch_id`` of etcd's answer to a create it refused (Go: ``clientv3.InvalidWatchID``).
_INVALID_WATCH_ID = -1


class Watches:
    """Watches for deletions over one ``Watch`` stream with the ``hasleader`` metadata."""

    def __init__(self, open_call: Callable[[], Any]) -> None:
        self._ids = itertools.count(1)
        self._watches: dict[int, Watch] = {}
        self._stream = _Stream("watch", open_call, self._response, self._failure)

    def _response(self, response: Any) -> None:
        if response.canceled and response.watch_id == _INVALID_WATCH_ID:
            # etcd refused a create without saying which (an expired token, say): this stream's token is
            # no good. Every watch looks again, and the next one opens a stream with the current token.
            self._stream.reset(ConnectionError(f"etcd refused a watch: {response.cancel_reason}"))
            return
        watch = self._watches.get(response.watch_id)
        if watch is None:
            return
        if (
            response.canceled
            or response.compact_revision
            or any(event.type == rpc.Event.EventType.DELETE for event in response.events)
        ):
            # A compacted start revision or a cancel by the server: wake up and look again.
            watch.fired.set()

    def _failure(self, exc: BaseException) -> None:
        watches, self._watches = self._watches, {}
        for watch in watches.values():
            watch.fired.set()

    def watch_delete(self, key: bytes, start_revision: int) -> Watch:
        watch = Watch(next(self._ids), key)
        self._watches[watch.id] = watch
        create = rpc.WatchCreateRequest(
            key=key,
            start_revision=start_revision,
            filters=[rpc.WatchCreateRequest.FilterType.NOPUT],
            watch_id=watch.id,
        )
        self._stream.send(rpc.WatchRequest(create_request=create))
        return watch

    def cancel(self, watch: Watch) -> None:
        if self._watches.pop(watch.id, None) is not None and self._stream.open:
            self._stream.send(rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=watch.id)))

    async def aclose(self) -> None:
        await self._stream.aclose()
        self._failure(ConnectionError("the locker was closed"))
