"""The only code that touches aetcd's private names; checked when imported.

aetcd 1.0 always dials ``insecure_channel`` and authenticates inside ``connect()`` without a deadline, so
the locker's client subclasses it and builds the channel itself from the settings aetcd keeps privately.
aetcd also keeps the user's credentials privately (read to authenticate again when etcd drops a token),
and its watcher a copy of the token.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aetcd
import aetcd.watcher
import grpc
from aetcd import rpc

from ._compat import require_names

__all__ = ["Client", "credentials_of", "share_token_with_watcher"]

require_names(
    "aetcd",
    [
        (aetcd.Client, ("_connected", "_host", "_port", "_options", "_timeout", "_watcher", "_username", "_password")),
        (aetcd.watcher.Watcher, ("_metadata",)),
    ],
)


class Client(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type hints
    """aetcd's client over a channel of our making: TLS with ``credentials``, and no authentication in
    ``connect()``, which only builds the channel; :func:`authenticate` does that, with a deadline.

    aetcd 1.0 always dials ``insecure_channel``, and authenticates inside ``connect()`` without one.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        options: dict[str, Any],
        credentials: grpc.ChannelCredentials | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        # aetcd keeps the credentials (``_username``, ``_password``); :func:`credentials_of` reads them.
        super().__init__(host=host, port=port, username=username, password=password, options=options)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        options = list(self._options.items())
        if self._credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self.channel = grpc.aio.secure_channel(target, self._credentials, options=options)
        # The stubs aetcd's connect() makes, so that the client works for aetcd's own methods too.
        self.auth_stub = rpc.AuthStub(self.channel)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=None)
        self._connected.set()
        await asyncio.sleep(0)


def credentials_of(client: aetcd.Client) -> tuple[str, str] | None:
    """The user name and password ``client`` authenticates with (aetcd keeps them privately), if any."""
    username, password = getattr(client, "_username", None), getattr(client, "_password", None)
    if isinstance(username, str) and isinstance(password, str):
        return username, password
    return None


def share_token_with_watcher(client: aetcd.Client) -> None:
    """Give aetcd's own watcher the client's current token: it opens its streams with a copy of its own."""
    watcher = getattr(client, "_watcher", None)
    if watcher is not None and hasattr(watcher, "_metadata"):
        watcher._metadata = client.metadata
