"""``EtcdLocker``: the public face of the etcd backend."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import aetcd

from ..._core._locker import LockerBase
from ..._options import EtcdOptions, Options
from ..._validate import check_str
from .config import check_client_options, parse_endpoints, parse_url
from .contender import Held
from .driver import EtcdDriver

if TYPE_CHECKING:  # the docs show ``-> Self``, not a private TypeVar
    if sys.version_info >= (3, 11):
        from typing import Self
    else:
        from typing_extensions import Self

__all__ = ["EtcdLocker"]


class EtcdLocker(LockerBase[Held, EtcdDriver]):
    """Locks in etcd, compatible with etcd's Go ``concurrency.Mutex`` and ``etcdctl lock``.

    Each obtained lock has a lease of its own, and its key ``<namespace><key>/<lease ID in hex>`` is
    attached to it; the lock belongs to the key of the name with the lowest create revision, which is
    also the lock's fencing token. Waiters queue their own keys and each watches only the key ahead of
    it, so the lock passes in FIFO order, waking one waiter per release. ``release()`` revokes the lease;
    ``refresh()`` keeps it alive once over the locker's keep-alive stream and checks that the key is
    still there; ``ttl()`` is the lease's remaining time in whole seconds.

    Semaphores and elections queue the same way under ``<namespace minus its last character>.semaphore/``
    and ``.election/`` (``distlock.semaphore/`` and ``distlock.election/`` by default), which no lock key
    can produce; elections keep the layout of Go's ``concurrency.Election`` and ``etcdctl elect``. A
    locker with an empty namespace has neither.

    A lease lives ``EtcdOptions.session_ttl`` seconds, by default the lock's ``ttl`` rounded up to whole
    seconds, and a leader change resets it to the full TTL. etcd would raise a shorter TTL to its minimum
    (1.5 election timeouts, 2 s with its default settings): ``obtain`` raises ``ValueError`` instead.
    Every RPC has a deadline of ``EtcdOptions.session_timeout`` seconds.

    Args:
        client: an ``aetcd.Client``. The locker never closes it. If it was given a user name and
            password, the locker authenticates it again whenever etcd refuses its token.
        options: defaults for every lock of this locker.
        etcd_options: settings of the etcd backend.
        namespace: prefix of every key the locker writes (include a trailing ``/`` if you want one).

    Raises:
        TypeError: an argument has the wrong type.
    """

    _backend = "etcd"

    def __init__(
        self,
        client: aetcd.Client,
        options: Options | None = None,
        etcd_options: EtcdOptions | None = None,
        *,
        namespace: str = "distlock/",
    ) -> None:
        if not isinstance(client, aetcd.Client):
            raise TypeError(f"client must be an aetcd.Client, not {type(client).__name__}")
        self._init(client, None, options, etcd_options, namespace)

    def _init(
        self,
        client: aetcd.Client | None,
        endpoints: list[tuple[str, int]] | None,
        options: Options | None,
        etcd_options: EtcdOptions | None,
        namespace: str,
    ) -> None:
        if etcd_options is not None and not isinstance(etcd_options, EtcdOptions):
            raise TypeError(
                f"etcd_options must be distlock_async.EtcdOptions or None, not {type(etcd_options).__name__}"
            )
        if client is not None:
            check_client_options(etcd_options)
        super().__init__(
            EtcdDriver(client, endpoints, etcd_options or EtcdOptions(), check_str("namespace", namespace)), options
        )

    @classmethod
    async def connect(
        cls,
        endpoints: list[str],
        options: Options | None = None,
        etcd_options: EtcdOptions | None = None,
        *,
        namespace: str = "distlock/",
    ) -> Self:
        """A locker over a client of its own, connected to ``endpoints`` of one etcd cluster.

        Calls go round robin over the endpoints and move on from a member that is down or has no
        leader; host names are resolved once, here. Connecting waits at most
        ``EtcdOptions.dial_timeout`` seconds. The locker closes the client in ``aclose()``.

        With ``EtcdOptions.tls`` the client speaks TLS; with ``username`` and ``password`` it authenticates
        once connected (within ``session_timeout``), and again whenever etcd refuses its token.

        Args:
            endpoints: ``["host:port", ...]`` of the cluster's members.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: an endpoint is malformed.
            BackendError: no endpoint could be reached within ``dial_timeout`` (the message says why:
                refused, a certificate not trusted, ...), a TLS file is unusable, or authentication failed.
        """
        self = cls._unconnected(parse_endpoints(endpoints), options, etcd_options, namespace)
        try:
            await self._driver.ensure()
        except BaseException:
            await self._driver.aclose()
            raise
        return self

    @classmethod
    def from_url(
        cls,
        url: str,
        options: Options | None = None,
        etcd_options: EtcdOptions | None = None,
        *,
        namespace: str = "distlock/",
    ) -> Self:
        """A locker over ``etcd://host:port[,host:port...]`` that owns its client and connects on first use.

        ``etcds://`` connects over TLS. ``user:password@`` before the hosts authenticates as that etcd
        user (both percent-decoded). Query parameters name the TLS files and the certificates' name:
        ``etcds://h1:2379,h2:2379?ca_file=ca.pem&cert_file=client.pem&key_file=client-key.pem&server_name=etcd``.
        What the URL sets lands in the [`EtcdOptions`][distlock_async.EtcdOptions] fields of the same names
        (``tls`` from the scheme); ``etcd_options`` may set the others, not a different value of these.
        No message ever shows the password.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: the URL is malformed, has an unknown query parameter, names a file that does not
                exist, or contradicts ``etcd_options``.
        """
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        target = parse_url(url, etcd_options)
        return cls._unconnected(target.endpoints, options, target.options, namespace)

    @classmethod
    def _unconnected(
        cls,
        endpoints: list[tuple[str, int]],
        options: Options | None,
        etcd_options: EtcdOptions | None,
        namespace: str,
    ) -> Self:
        self = cls.__new__(cls)
        self._init(None, endpoints, options, etcd_options, namespace)
        return self

    @property
    def client(self) -> aetcd.Client | None:
        """The aetcd client this locker was given or made (``None`` until a URL locker first connects)."""
        return self._driver.client

    @property
    def namespace(self) -> str:
        """The prefix of every key this locker writes."""
        return self._driver.namespace

    def __repr__(self) -> str:
        return f"<distlock_async.EtcdLocker namespace={self.namespace!r}>"


EtcdLocker.__module__ = "distlock_async"
