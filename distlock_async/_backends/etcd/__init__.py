"""The etcd backend, one job per module.

- ``locker``: ``EtcdLocker``, the public class;
- ``config``: endpoints and ``etcd://`` URLs, checked once;
- ``driver``: the driver contract, the connection, RPCs with deadlines and retries, leases;
- ``contender``: one ``obtain`` (lease, queued key, watch on the key ahead);
- ``coordination``: semaphores and elections (views of the driver, the leader's read, ``observe()``);
- ``queue``: a lock's keys in etcd (a permit's, a candidate's) and the requests that read and change them;
- ``streams``: the shared keep-alive and watch streams;
- ``channel``: the gRPC channel, TLS, dialing, authentication, awaiting a call;
- ``errors``: gRPC's errors, which are worth another try, and ``map_errors``, the one boundary where
  the others become ``BackendError``.

aetcd's private names are touched only in ``.._compat_aetcd``.
"""

from .locker import EtcdLocker

__all__ = ["EtcdLocker"]
