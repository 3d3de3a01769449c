"""The fixtures of the etcd suites: an admin client on the session's member, lockers that the lease audit
tracks, and the audit itself, which runs after every test of this package (and of no other).

After each test the session's member must have no lease that a handed-out lock, permit or term does not
explain, and no watch left open. ``test_etcd_security.py`` sets up members of its own and audits those
instead (its ``audits``): it replaces ``audit`` with a fixture that checks nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aetcd
import pytest

from distlock_async import EtcdOptions, Options
from distlock_async.testing.servers import EtcdServer

from ..etcd_helpers import EtcdAudit, TracingEtcdLocker


@pytest.fixture
async def admin(etcd_server: EtcdServer) -> AsyncIterator[aetcd.Client]:
    client = aetcd.Client(host="127.0.0.1", port=etcd_server.port, timeout=5)
    await client.connect()
    yield client
    await client.close()


@pytest.fixture(autouse=True)
async def audit(admin: aetcd.Client, etcd_server: EtcdServer) -> AsyncIterator[EtcdAudit]:
    audit = EtcdAudit(admin, etcd_server.port)
    await audit.start()
    yield audit
    for locker in audit.lockers:
        await locker.aclose()
    await audit.check()


@pytest.fixture
def make(audit: EtcdAudit, etcd_server: EtcdServer) -> Callable[..., TracingEtcdLocker]:
    """``make(options=None, etcd_options=None, url=None)``: a tracked locker on the session's etcd (or at
    ``url``), in the default namespace."""

    def make(
        options: Options | None = None, etcd_options: EtcdOptions | None = None, url: str | None = None
    ) -> TracingEtcdLocker:
        locker = TracingEtcdLocker.from_url(url or f"etcd://{etcd_server.endpoint}", options, etcd_options)
        audit.track(locker)
        return locker

    return make
