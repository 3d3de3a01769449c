"""Test support for code that uses distlock_async: real servers on free ports, and a pytest plugin.

The plugin (:mod:`distlock_async.testing.pytest_plugin`) is registered with pytest when the package is
installed; its fixtures all start with ``distlock_`` and cost nothing until a test asks for one.
"""

from .servers import EtcdServer, RedisServer, ServerMissing, free_port

__all__ = ["EtcdServer", "RedisServer", "ServerMissing", "free_port"]
