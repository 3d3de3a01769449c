"""SPEC ``from_url``: the schemes of the backends this version ships, a clear ValueError for everything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from distlock_async import EtcdLocker, EtcdOptions, MemoryLocker, Options, RedisLocker, from_url


def test_memory_url_gives_a_memory_locker_with_the_options() -> None:
    options = Options(ttl=5)
    locker = from_url("memory://", options)
    assert isinstance(locker, MemoryLocker)
    assert locker.options is options


def test_each_memory_locker_from_a_url_has_its_own_store() -> None:
    a, b = from_url("memory://"), from_url("MEMORY://")
    assert isinstance(a, MemoryLocker)
    assert isinstance(b, MemoryLocker)
    assert a.store is not b.store


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("etcd://", "etcd://host:port"),
        ("etcd://127.0.0.1", "host:port"),
        ("etcd://127.0.0.1:http", "host:port"),
        ("etcd://127.0.0.1:70000", "host:port"),
        ("etcd://127.0.0.1:2379,", "host:port"),
        ("etcd://127.0.0.1:2379/prefix", "etcd://host:port"),
        ("etcd://127.0.0.1:2379?dial_timeout=1", r"unknown etcd URL parameter\(s\) dial_timeout"),
        ("etcd://user:pw@127.0.0.1", "host:port"),
        ("http://localhost", "scheme 'http' is not supported"),
        ("localhost:6379", "scheme://"),
        ("", "scheme://"),
        ("memory://somewhere", "takes nothing after the scheme"),
        ("memory://?db=1", "takes nothing after the scheme"),
        ("redis://", "no host"),
        ("redis://:6379/0", "no host"),
        ("rediss://:pw@:6380", "no host"),
        ("redis://localhost:abc", "Port could not be cast"),
        ("redis://localhost:70000", "Port out of range"),
        ("redis://localhost:0", "port 0"),
        ("redis://localhost/abc", "database must be a number"),
        ("redis://localhost/-1", "database must be a number"),
        ("redis://localhost?db=x", "'db'"),
        ("redis://localhost/0#top", "fragment"),
        ("redis://[::1", "IPv6"),
        ("unix://", "socket's path"),
        ("redis://localhost?socket_timeout=-1", "socket_timeout must be > 0"),
        ("redis://localhost?socket_timeout=nan", "socket_timeout must be finite"),
        ("redis://localhost?socket_connect_timeout=0", "socket_connect_timeout must be > 0"),
        ("redis://localhost?socket_timeout=abc", "socket_timeout"),
        ("redis://localhost?bogus=1", "bogus"),
        ("rediss://localhost?ssl_cert_reqs=maybe", "Certificate Requirements"),
        ("rediss://localhost?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs: no such file"),
    ],
)
def test_other_urls_raise_value_error(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        from_url(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379?foo=bar", "redis://localhost:6379?foo=bar"),
        (
            "rediss://u:s3cret@localhost/2?socket_timeout=1&foo=bar",
            "rediss://u:***@localhost/2?socket_timeout=1&foo=bar",
        ),
        ("unix:///run/redis.sock?db=1&foo=bar", "unix:///run/redis.sock?db=1&foo=bar"),
    ],
)
def test_an_unknown_redis_url_option_is_named_with_the_url(url: str, shown: str) -> None:
    with pytest.raises(ValueError, match="unknown option 'foo'") as info:
        from_url(url)
    assert str(info.value) == f"not a usable Redis URL: {shown!r} (unknown option 'foo')"


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((None,), {}, "url"),
        ((b"memory://",), {}, "url"),
        (("memory://", {"ttl": 1}), {}, "options"),
        (("memory://",), {"etcd_options": {}}, "etcd_options"),
    ],
)
def test_wrong_types_raise_type_error(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(TypeError, match=name):
        from_url(*args, **kwargs)


@pytest.mark.parametrize(
    ("url", "endpoints"),
    [
        ("etcd://127.0.0.1:2379", [("127.0.0.1", 2379)]),
        ("ETCD://localhost:2379/", [("localhost", 2379)]),
        (
            "etcd://10.0.0.1:2379,10.0.0.2:2380,10.0.0.3:2381",
            [("10.0.0.1", 2379), ("10.0.0.2", 2380), ("10.0.0.3", 2381)],
        ),
        ("etcd://[::1]:2379", [("::1", 2379)]),
    ],
)
def test_etcd_url_gives_an_etcd_locker_that_connects_on_first_use(url: str, endpoints: list[tuple[str, int]]) -> None:
    options, etcd_options = Options(ttl=5), EtcdOptions(dial_timeout=1)
    locker = from_url(url, options, etcd_options=etcd_options)
    assert isinstance(locker, EtcdLocker)
    assert locker.options is options
    assert locker.client is None  # nothing dialled yet: from_url stays synchronous
    assert locker.namespace == "distlock/"
    assert locker._driver.endpoints == endpoints
    assert locker._driver.options is etcd_options


def test_etcd_options_on_a_memory_url_are_refused() -> None:
    with pytest.raises(ValueError, match="etcd_options"):
        from_url("memory://", etcd_options=EtcdOptions())


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@localhost:abc", "redis://user:***@localhost:abc"),
        ("redis://:s3cret@localhost:abc", "redis://:***@localhost:abc"),
        ("redis://user:p@ss@localhost:abc", "redis://user:***@localhost:abc"),  # an unescaped @ in it
        ("redis://localhost:abc?username=u&password=s3cret", "redis://localhost:abc?username=u&password=***"),
    ],
)
def test_a_bad_url_is_shown_without_its_password(url: str, shown: str) -> None:
    with pytest.raises(ValueError, match="Port could not be cast") as info:
        from_url(url)
    assert repr(shown) in str(info.value)
    assert "s3cret" not in str(info.value)
    assert "p@ss" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://user:pw@localhost:6380/15?socket_timeout=0.5&socket_connect_timeout=1",
        "rediss://localhost:6380/0?ssl_cert_reqs=none",
        "unix:///run/redis/redis.sock?db=2",
        "REDIS://LOCALHOST:6379/",
    ],
)
def test_redis_urls_that_can_work_make_a_locker(url: str) -> None:
    locker = from_url(url)  # synchronous: nothing is dialled before the first lock call
    assert isinstance(locker, RedisLocker)
    assert locker.namespace == "distlock"


#: Characters that must be percent-encoded in a URL's user info, to show that they are decoded.
PASSWORD = "p@ss:w/rd%s3cr3t"


def credentials(user: str, password: str) -> str:
    return f"{quote(user, safe='')}:{quote(password, safe='')}@"


def test_an_etcds_url_sets_tls_files_and_percent_decoded_credentials(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    for path in (ca, cert, key):
        path.write_text("")
    url = (
        f"etcds://{credentials('lock user', PASSWORD)}10.0.0.1:2379,10.0.0.2:2379"
        f"?ca_file={quote(str(ca))}&cert_file={quote(str(cert))}&key_file={quote(str(key))}&server_name=etcd"
    )
    locker = from_url(url, etcd_options=EtcdOptions(dial_timeout=1))
    assert isinstance(locker, EtcdLocker)
    options = locker._driver.options
    assert (options.tls, options.ca_file, options.cert_file, options.key_file) == (True, str(ca), str(cert), str(key))
    assert (options.server_name, options.username, options.password) == ("etcd", "lock user", PASSWORD)
    assert options.dial_timeout == 1
    assert locker._driver.endpoints == [("10.0.0.1", 2379), ("10.0.0.2", 2379)]
    assert PASSWORD not in repr(options)
    assert from_url("etcds://127.0.0.1:2379")._driver.options.tls is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "etcd_options", "match"),
    [
        ("etcds://127.0.0.1:2379?dial_timeout=1&x=2", None, r"unknown etcd URL parameter\(s\) dial_timeout, x"),
        ("etcds://127.0.0.1:2379?server_name=a&server_name=b", None, "server_name is given twice"),
        ("etcds://127.0.0.1:2379?ca_file", None, "name=value"),
        ("etcd://127.0.0.1:2379?server_name=etcd", None, "server_name needs tls=True"),
        ("etcds://127.0.0.1:2379?ca_file=/no/such/ca.pem", None, "ca_file must be an existing file, got '/no/such"),
        ("etcd://user@127.0.0.1:2379", None, "user:password@"),
        ("etcd://:pw@127.0.0.1:2379", None, "user:password@"),
        ("etcd://127.0.0.1:2379", EtcdOptions(tls=True), "use etcds://"),
        ("etcds://u:p@127.0.0.1:2379", EtcdOptions(username="v", password="p"), "etcd_options.username contradicts"),
        ("etcds://u:p@127.0.0.1:2379", EtcdOptions(username="u", password="q"), "contradicts the URL's password"),
    ],
)
def test_bad_etcd_urls_raise_value_error(url: str, etcd_options: EtcdOptions | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        from_url(url, etcd_options=etcd_options)


def test_url_settings_that_agree_with_etcd_options_are_accepted() -> None:
    etcd_options = EtcdOptions(username="u", password="p", session_timeout=2)
    locker = EtcdLocker.from_url("etcd://u:p@127.0.0.1:2379", etcd_options=etcd_options)
    assert locker._driver.options is etcd_options
