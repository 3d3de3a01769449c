"""etcd over TLS (server certificates, mutual TLS) and with users and passwords (issue 6, "Security").

Certificates come from ``trustme`` at test time; the servers are real etcd members set up by
``EtcdServer``. The member with authentication forgets a token after one idle second
(``--auth-token-ttl 1``), so its tests also show that the locker renews tokens on its own. After every
test, each member the test used must have no lease that a handed-out lock does not explain, and no
watch left open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import aetcd
import anyio
import grpc
import pytest
import trustme

from distlock_async import BackendError, EtcdLocker, EtcdOptions, Lock, Locker, NotObtainedError, from_url
from distlock_async._backends._compat_aetcd import Client
from distlock_async.testing.servers import EtcdServer, etcd_metrics, running

from ..etcd_helpers import EtcdAudit, TracingEtcdLocker

pytestmark = pytest.mark.anyio

LIMIT = 20.0
ROOT_PASSWORD = "r00t-Secret"
#: Characters that must be percent-encoded in a URL's user info, to show that they are decoded.
PASSWORD = "p@ss:w/rd%s3cr3t"
STRANGER_PASSWORD = "str4nger-Secret"
#: The member's ``--auth-token-ttl``; a simple token lives this long after its last use, plus up to 1 s
#: (etcd checks expiries once a second).
TOKEN_TTL = 1


def credentials(user: str, password: str) -> str:
    return f"{quote(user, safe='')}:{quote(password, safe='')}@"


def with_user(server: EtcdServer, user: str = "locker", password: str = PASSWORD) -> str:
    scheme, _, rest = server.url.partition("://")
    return f"{scheme}://{credentials(user, password)}{rest}"


async def token_expiry() -> None:
    """Let a token that nothing uses meanwhile expire: server-side time passing, with no event to await."""
    await asyncio.sleep(TOKEN_TTL + 1.5)


async def queued_keys(server: EtcdServer, name: str, count: int) -> None:
    """Wait until ``count`` keys queue for lock ``name``: a key in the queue has no event to await."""
    while True:
        output = await asyncio.to_thread(server.etcdctl, "get", "--prefix", "--keys-only", f"distlock/{name}/")
        if len(output.split()) >= count:
            return
        await asyncio.sleep(0.02)


async def handed_over(lock: Lock, waiting: Locker, server: EtcdServer) -> Lock:
    """Release ``lock`` to a waiter of ``waiting`` queued behind it; the waiter's lock, once it is checked to
    have been woken by the release (not by its retry budget) with a greater fencing token."""
    waiter = asyncio.create_task(waiting.obtain(lock.key, max_retries=1, retry_delay=LIMIT))
    await queued_keys(server, lock.key, 2)
    await lock.release()
    started = time.monotonic()
    handed = await waiter
    assert time.monotonic() - started < 2, "woken by the release, not by its retry budget"
    assert handed.fencing_token > lock.fencing_token
    return handed


def authentications(server: EtcdServer) -> int:
    """How many Authenticate calls the member has answered."""
    return sum(
        int(value)
        for name, value in etcd_metrics(server.metrics_port).items()
        if name.startswith("grpc_server_handled_total{") and 'grpc_method="Authenticate"' in name
    )


# --- servers ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[EtcdServer]:
    yield from running(EtcdServer(tls=True))


@pytest.fixture(scope="module")
def mtls_etcd() -> Iterator[EtcdServer]:
    yield from running(EtcdServer(client_cert_auth=True))


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdServer]:
    """TLS, authentication on, and two users: ``locker`` may use ``distlock/``, ``stranger`` only ``elsewhere/``."""
    server = EtcdServer(tls=True, extra=["--auth-token", "simple", "--auth-token-ttl", str(TOKEN_TTL)])
    for started in running(server):
        server.enable_auth(ROOT_PASSWORD)
        server.add_user("locker", PASSWORD, "distlock/")
        server.add_user("stranger", STRANGER_PASSWORD, "elsewhere/")
        yield started


@pytest.fixture
def fresh_etcd() -> Iterator[EtcdServer]:
    """A member of the test's own, for a test that changes its settings (ask for it before ``audits``)."""
    yield from running(EtcdServer(extra=["--auth-token", "simple", "--auth-token-ttl", str(TOKEN_TTL)]))


def _admin(server: EtcdServer) -> Client:
    """A client for the audit's ``LeaseLeases``, which etcd 3.4 answers without a token."""
    credentials = None
    if server.tls:
        key = chain = None
        if server.client_cert_auth:
            key, chain = server.client_key_file.read_bytes(), server.client_cert_file.read_bytes()
        credentials = grpc.ssl_channel_credentials(server.ca_file.read_bytes(), key, chain)
    return Client("127.0.0.1", server.port, options={}, credentials=credentials)


class Audits:
    """Lockers made for a test, and the checks of every member they used."""

    def __init__(self) -> None:
        self._audits: dict[int, EtcdAudit] = {}

    async def locker(self, server: EtcdServer, url: str, *, namespace: str = "distlock/") -> TracingEtcdLocker:
        """A locker of ``url`` (``server``'s, perhaps with credentials), tracked by that member's audit."""
        audit = self._audits.get(server.port)
        if audit is None:
            audit = self._audits[server.port] = EtcdAudit(_admin(server), server.metrics_port)
            await audit.start()
        locker = TracingEtcdLocker.from_url(url, namespace=namespace)
        audit.track(locker)
        return locker

    async def check(self) -> None:
        audits, self._audits = list(self._audits.values()), {}
        for audit in audits:
            for locker in audit.lockers:
                await locker.aclose()
            try:
                await audit.check()
            finally:
                await audit.admin.close()


@pytest.fixture
async def audits() -> AsyncIterator[Audits]:
    audits = Audits()
    yield audits
    await audits.check()


@pytest.fixture
def audit() -> None:
    """The package's audit of the session's member, which these tests do not use: ``audits`` checks the
    members they do use."""


# --- TLS --------------------------------------------------------------------------------------------------


async def test_locks_over_tls_from_an_etcds_url(tls_etcd: EtcdServer, audits: Audits) -> None:
    first = await audits.locker(tls_etcd, tls_etcd.url)
    second = await audits.locker(tls_etcd, tls_etcd.url)
    with anyio.fail_after(LIMIT):
        lock = await first.obtain("tls", ttl=5)
        with pytest.raises(NotObtainedError):
            await second.obtain("tls", max_retries=0)
        await lock.refresh()
        assert 0 < await lock.ttl() <= 5
        # A waiter is woken over the locker's watch stream, which runs over TLS as well.
        handed = await handed_over(lock, second, tls_etcd)
        await handed.release()
        async with first.lock("tls-context", ttl=2) as held:
            assert await held.ttl() > 0


async def test_connect_with_tls_options_and_a_server_name(tls_etcd: EtcdServer) -> None:
    # The certificate is valid for "localhost": the name checked is the one given, not the address dialled.
    etcd_options = EtcdOptions(tls=True, ca_file=str(tls_etcd.ca_file), server_name="localhost")
    async with await EtcdLocker.connect([tls_etcd.endpoint], etcd_options=etcd_options) as locker:
        with anyio.fail_after(LIMIT):
            lock = await locker.obtain("by-connect")
            await lock.release()
    assert locker.client is None


async def test_a_certificate_for_another_name_is_refused_at_once(tls_etcd: EtcdServer) -> None:
    etcd_options = EtcdOptions(tls=True, ca_file=str(tls_etcd.ca_file), server_name="etcd.example.com", dial_timeout=5)
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"cannot connect.*Hostname Verification"):
        await EtcdLocker.connect([tls_etcd.endpoint], etcd_options=etcd_options)
    assert time.monotonic() - started < 2, "the handshake's failure ends the dial, not its timeout"


async def test_a_certificate_from_an_unknown_authority_is_refused_at_once(tls_etcd: EtcdServer, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    url = f"etcds://{tls_etcd.endpoint}?ca_file={quote(str(other_ca))}"
    async with from_url(url, etcd_options=EtcdOptions(dial_timeout=5)) as locker:
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"cannot connect.*CERTIFICATE_VERIFY_FAILED"):
            await locker.obtain("k")
        assert time.monotonic() - started < 2, "the handshake's failure ends the dial, not its timeout"


async def test_plain_etcd_against_a_tls_member_fails_at_once(tls_etcd: EtcdServer) -> None:
    async with from_url(f"etcd://{tls_etcd.endpoint}", etcd_options=EtcdOptions(dial_timeout=5)) as locker:
        started = time.monotonic()
        with pytest.raises(BackendError, match="cannot connect: no endpoint accepted the connection"):
            await locker.obtain("k")
        assert time.monotonic() - started < 2


async def test_mutual_tls_with_a_client_certificate(mtls_etcd: EtcdServer, audits: Audits) -> None:
    assert "cert_file=" in mtls_etcd.url
    locker = await audits.locker(mtls_etcd, mtls_etcd.url)
    with anyio.fail_after(LIMIT):
        async with locker.lock("mtls", ttl=2) as lock:
            assert await lock.ttl() > 0


async def test_mutual_tls_without_a_client_certificate_is_refused(mtls_etcd: EtcdServer) -> None:
    url = f"etcds://{mtls_etcd.endpoint}?ca_file={quote(str(mtls_etcd.ca_file))}"
    async with from_url(url, etcd_options=EtcdOptions(dial_timeout=5)) as locker:
        with anyio.fail_after(LIMIT), pytest.raises(BackendError, match="etcd"):
            await locker.obtain("k")


async def test_tls_files_are_checked_before_dialling(tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_file, other_key = tmp_path / "cert.pem", tmp_path / "other-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    # Nothing listens at port 1: each error comes from the files, before any connection.
    cases = [
        (EtcdOptions(tls=True, ca_file=str(not_pem)), rf"ca_file '{re.escape(str(not_pem))}' holds no PEM"),
        (EtcdOptions(tls=True, cert_file=str(cert_file), key_file=str(other_key)), "cert_file .* and key_file"),
    ]
    for etcd_options, match in cases:
        with pytest.raises(BackendError, match=match):
            await EtcdLocker.connect(["127.0.0.1:1"], etcd_options=etcd_options)


# --- users and passwords ----------------------------------------------------------------------------------


async def test_an_authenticated_user_locks_and_waits(auth_etcd: EtcdServer, audits: Audits) -> None:
    first = await audits.locker(auth_etcd, with_user(auth_etcd))
    second = await audits.locker(auth_etcd, with_user(auth_etcd))
    with anyio.fail_after(LIMIT):
        lock = await first.obtain("auth", ttl=5)
        with pytest.raises(NotObtainedError):
            await second.obtain("auth", max_retries=0)
        handed = await handed_over(lock, second, auth_etcd)  # over a watch stream with the token
        assert await handed.ttl() > 0
        await handed.release()


async def test_a_wrong_password_is_a_backend_error_naming_the_user(auth_etcd: EtcdServer) -> None:
    async with from_url(with_user(auth_etcd, password="not-the-password")) as locker:
        with anyio.fail_after(LIMIT), pytest.raises(BackendError) as info:
            await locker.obtain("k")
    assert str(info.value) == (
        "etcd: cannot authenticate as user 'locker': "
        "INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password"
    )


async def test_a_user_without_permission_on_the_namespace_gets_a_helpful_error(
    auth_etcd: EtcdServer, audits: Audits
) -> None:
    locker = await audits.locker(auth_etcd, with_user(auth_etcd, "stranger", STRANGER_PASSWORD))
    with anyio.fail_after(LIMIT), pytest.raises(BackendError) as info:
        await locker.obtain("k")
    message = str(info.value)
    assert "PERMISSION_DENIED" in message
    assert "user 'stranger' needs read and write permission on the keys under 'distlock/'" in message
    # The same user in its own namespace may lock.
    mine = await audits.locker(auth_etcd, with_user(auth_etcd, "stranger", STRANGER_PASSWORD), namespace="elsewhere/")
    with anyio.fail_after(LIMIT):
        await (await mine.obtain("k")).release()


async def test_no_credentials_against_a_cluster_with_auth_says_what_is_missing(auth_etcd: EtcdServer) -> None:
    async with from_url(auth_etcd.url) as locker:
        with anyio.fail_after(LIMIT), pytest.raises(BackendError, match="give a user name and password"):
            await locker.obtain("k")


async def test_an_expired_token_is_renewed_and_the_lock_kept(
    auth_etcd: EtcdServer, audits: Audits, caplog_debug: pytest.LogCaptureFixture
) -> None:
    locker = await audits.locker(auth_etcd, with_user(auth_etcd))
    with anyio.fail_after(LIMIT):
        lock = await locker.obtain("renew", ttl=10)
        before = authentications(auth_etcd)
        await token_expiry()
        await lock.refresh()  # its ownership check is the first call with the dead token
        assert authentications(auth_etcd) == before + 1
        assert locker.client is not None
        assert locker.client._watcher._metadata == locker.client.metadata, "aetcd's own watches get the new token"
        assert await lock.ttl() > 8
        await lock.release()
    assert "etcd refused the auth token; authenticating again" in caplog_debug.messages


async def test_a_waiter_whose_watch_stream_has_a_dead_token_is_still_woken(
    auth_etcd: EtcdServer, audits: Audits, caplog_debug: pytest.LogCaptureFixture
) -> None:
    """etcd refuses a new watch on a stream whose token expired, without saying which watch: the locker
    opens a new stream with its new token rather than wait for a wake-up that cannot come."""
    url = with_user(auth_etcd)
    holder = await audits.locker(auth_etcd, url)
    middle = await audits.locker(auth_etcd, url)
    waiting = await audits.locker(auth_etcd, url)
    with anyio.fail_after(LIMIT):
        lock = await holder.obtain("dead-token", ttl=10)
        queued = asyncio.create_task(middle.obtain("dead-token", ttl=10, max_retries=1, retry_delay=LIMIT))
        await queued_keys(auth_etcd, "dead-token", 2)
        waiter = asyncio.create_task(waiting.obtain("dead-token", ttl=10, max_retries=1, retry_delay=LIMIT))
        await queued_keys(auth_etcd, "dead-token", 3)
        # The waiter watches the middle key over a stream opened with a token that now expires.
        await token_expiry()
        queued.cancel()  # the middle key goes: the waiter wakes, must watch the holder's key anew
        with pytest.raises(asyncio.CancelledError):
            await queued
        while not any("etcd refused a watch" in message for message in caplog_debug.messages):  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # the refusal comes back on the stream: no event of ours to await
        await lock.release()
        started = time.monotonic()
        handed = await waiter
        assert time.monotonic() - started < 2, "woken by the release over a new watch stream"
        await handed.release()


async def test_credentials_work_before_and_after_auth_is_enabled(fresh_etcd: EtcdServer, audits: Audits) -> None:
    """Like Go's client: no token while the cluster has auth off; a token as soon as it asks for one."""
    locker = await audits.locker(fresh_etcd, with_user(fresh_etcd))
    with anyio.fail_after(LIMIT):
        await (await locker.obtain("later")).release()
        assert locker.client is not None
        assert locker.client.metadata is None
        await asyncio.to_thread(fresh_etcd.enable_auth, ROOT_PASSWORD)
        await asyncio.to_thread(fresh_etcd.add_user, "locker", PASSWORD, "distlock/")
        await (await locker.obtain("later")).release()
        assert locker.client.metadata is not None


async def test_an_aetcd_client_of_your_own_gets_new_tokens_too(fresh_etcd: EtcdServer) -> None:
    """aetcd authenticates once, in ``connect()``; the locker renews the token of the client it is given."""
    await asyncio.to_thread(fresh_etcd.enable_auth, ROOT_PASSWORD)
    await asyncio.to_thread(fresh_etcd.add_user, "locker", PASSWORD, "distlock/")
    client = aetcd.Client(host="127.0.0.1", port=fresh_etcd.port, username="locker", password=PASSWORD, timeout=5)
    try:
        async with EtcdLocker(client) as locker:
            with anyio.fail_after(LIMIT):
                await (await locker.obtain("own")).release()
                first = client.metadata
                await token_expiry()
                await (await locker.obtain("own")).release()
                assert client.metadata != first
                assert client._watcher._metadata == client.metadata, "aetcd's own watches get the new token"
    finally:
        await client.close()


# --- the password stays secret -----------------------------------------------------------------------------


def _everything_said(exc: BaseException) -> str:
    """An exception's message, repr, causes and formatted traceback."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


async def test_the_password_appears_in_no_repr_message_or_log_record(
    auth_etcd: EtcdServer, audits: Audits, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, grpc's, asyncio's
    said: list[str] = []
    secrets = [PASSWORD, quote(PASSWORD, safe=""), "not-the-password", STRANGER_PASSWORD]

    good = await audits.locker(auth_etcd, with_user(auth_etcd))
    said += [repr(good), repr(good._driver.options), str(good._driver.options)]
    with anyio.fail_after(LIMIT):
        lock = await good.obtain("secret", ttl=10)
        await token_expiry()
        await lock.refresh()  # a renewal, with its debug log
        await lock.release()
    said += [repr(good.client), repr(lock)]

    async with from_url(with_user(auth_etcd, password="not-the-password")) as wrong:
        with pytest.raises(BackendError) as info:
            await wrong.obtain("secret")
    said.append(_everything_said(info.value))

    stranger = await audits.locker(auth_etcd, with_user(auth_etcd, "stranger", STRANGER_PASSWORD))
    with pytest.raises(BackendError) as info:
        await stranger.obtain("secret")
    said.append(_everything_said(info.value))

    malformed = [
        f"etcds://locker:{PASSWORD}@{auth_etcd.endpoint}",  # not encoded: unparseable
        f"etcds://{credentials('locker', PASSWORD)}{auth_etcd.endpoint}/path",
        f"etcds://{credentials('locker', PASSWORD)}{auth_etcd.endpoint}?ssl_ca_certs=x",
        f"etcd:{credentials('locker', PASSWORD)}{auth_etcd.endpoint}",
        f"memory://{credentials('locker', PASSWORD)}",
    ]
    for url in malformed:
        with pytest.raises(ValueError, match=r"look like|parameter|takes nothing") as failed:
            from_url(url)
        said.append(_everything_said(failed.value))
    with pytest.raises(ValueError, match="password") as failed:
        from_url(with_user(auth_etcd), etcd_options=EtcdOptions(username="locker", password="other"))
    said.append(_everything_said(failed.value))

    said += [record.getMessage() for record in caplog.records]
    said += [record.exc_text or "" for record in caplog.records]
    assert any("authenticating again" in text for text in said), "the renewal was logged"
    text = "\n".join(said)
    for secret in secrets:
        assert secret not in text


# --- a client of your own --------------------------------------------------------------------------------


async def test_a_client_of_your_own_takes_no_connection_options(tls_etcd: EtcdServer) -> None:
    client = _admin(tls_etcd)
    with pytest.raises(ValueError, match=r"EtcdOptions.tls applies to a client the locker makes"):
        EtcdLocker(client, etcd_options=EtcdOptions(tls=True))
    # The client made with TLS works under a locker as any aetcd.Client does.
    async with EtcdLocker(client) as locker:
        with anyio.fail_after(LIMIT):
            await (await locker.obtain("own-client")).release()
    await client.close()


# --- the command line ------------------------------------------------------------------------------------


async def test_status_over_tls_with_a_password_from_the_command_line(auth_etcd: EtcdServer) -> None:
    def status(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "distlock_async", "--url", url, "status", "--json", "cli-key"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "error"},
        )

    done = await asyncio.to_thread(status, with_user(auth_etcd))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["held"] is False
    refused = await asyncio.to_thread(status, with_user(auth_etcd, password="not-the-password"))
    assert refused.returncode != 0
    assert "cannot authenticate as user 'locker'" in refused.stderr
    for output in (done.stdout, done.stderr, refused.stdout, refused.stderr):
        assert PASSWORD not in output
        assert quote(PASSWORD, safe="") not in output
        assert "not-the-password" not in output
