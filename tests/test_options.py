"""SPEC "Options": defaults, validation of every field, and per-call override rules."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distlock_async import EtcdOptions, Options


def test_options_defaults_match_the_spec() -> None:
    options = Options()
    assert (options.ttl, options.max_retries, options.retry_delay, options.refresh_interval) == (30.0, 10, 0.1, None)
    assert options.interval_for(options.ttl) == 10.0  # None means ttl / 3


def test_holder_defaults_to_none_and_keeps_a_label_of_up_to_256_utf8_bytes() -> None:
    assert Options().holder is None
    assert Options(holder="worker 1 on rack ü").holder == "worker 1 on rack ü"
    at_limit = "a" * 254 + "é"  # "é" is two bytes: 256 bytes in 255 characters
    assert Options(holder=at_limit).holder == at_limit
    with pytest.raises(ValueError, match="holder must be at most 256 bytes in UTF-8, got 257"):
        Options(holder="a" * 255 + "é")  # 256 characters, but 257 bytes: the limit counts bytes


def test_etcd_options_defaults_match_the_spec() -> None:
    options = EtcdOptions()
    assert (options.dial_timeout, options.session_ttl, options.session_timeout) == (5.0, None, 5.0)


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Options().ttl = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        EtcdOptions().dial_timeout = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": -1.0}, ValueError, "ttl"),
        ({"ttl": math.nan}, ValueError, "ttl"),
        ({"ttl": math.inf}, ValueError, "ttl"),
        ({"ttl": 1e300}, ValueError, "ttl"),
        ({"ttl": True}, TypeError, "ttl"),
        ({"ttl": "30"}, TypeError, "ttl"),
        ({"ttl": None}, TypeError, "ttl"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
        ({"max_retries": True}, TypeError, "max_retries"),
        ({"max_retries": None}, TypeError, "max_retries"),
        ({"retry_delay": -0.001}, ValueError, "retry_delay"),
        ({"retry_delay": math.inf}, ValueError, "retry_delay"),
        ({"retry_delay": False}, TypeError, "retry_delay"),
        ({"refresh_interval": 0}, ValueError, "refresh_interval"),
        ({"refresh_interval": -1}, ValueError, "refresh_interval"),
        ({"refresh_interval": 30}, ValueError, "refresh_interval"),
        ({"refresh_interval": 31}, ValueError, "refresh_interval"),
        ({"refresh_interval": math.nan}, ValueError, "refresh_interval"),
        ({"refresh_interval": True}, TypeError, "refresh_interval"),
        ({"holder": 42}, TypeError, "holder must be a str"),
        ({"holder": b"worker-1"}, TypeError, "holder must be a str"),
        ({"holder": ""}, ValueError, "holder must not be empty"),
        ({"holder": "x" * 257}, ValueError, "holder must be at most 256 bytes"),
        ({"holder": "bad \udc80"}, ValueError, "holder must be encodable as UTF-8"),
    ],
)
def test_bad_options_raise_naming_the_field(kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=name):
        Options(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"dial_timeout": 0}, ValueError, "dial_timeout"),
        ({"dial_timeout": math.nan}, ValueError, "dial_timeout"),
        ({"dial_timeout": "5"}, TypeError, "dial_timeout"),
        ({"session_ttl": 0}, ValueError, "session_ttl"),
        ({"session_ttl": 1.5}, TypeError, "session_ttl"),
        ({"session_ttl": True}, TypeError, "session_ttl"),
        ({"session_ttl": 10**12}, ValueError, "session_ttl"),
        ({"session_timeout": -1}, ValueError, "session_timeout"),
        ({"session_timeout": math.inf}, ValueError, "session_timeout"),
    ],
)
def test_bad_etcd_options_raise_naming_the_field(kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=name):
        EtcdOptions(**kwargs)


def test_ints_are_accepted_as_seconds_and_stored_as_float() -> None:
    options = Options(ttl=5, retry_delay=0, refresh_interval=1)
    assert isinstance(options.ttl, float)
    assert isinstance(options.retry_delay, float)
    assert isinstance(options.refresh_interval, float)


def test_an_explicit_refresh_interval_applies_to_per_call_ttls_above_it() -> None:
    options = Options(ttl=30, refresh_interval=5)
    assert options.interval_for(60) == 5
    with pytest.raises(ValueError, match="ttl"):
        options.interval_for(5)


@given(
    ttl=st.floats(min_value=1e-6, max_value=365 * 24 * 3600.0),
    retries=st.integers(min_value=0, max_value=10**9),
    delay=st.floats(min_value=0, max_value=365 * 24 * 3600.0),
    fraction=st.floats(min_value=0.01, max_value=0.99),
)
def test_every_value_in_range_is_accepted(ttl: float, retries: int, delay: float, fraction: float) -> None:
    options = Options(ttl=ttl, max_retries=retries, retry_delay=delay, refresh_interval=ttl * fraction)
    assert 0 < options.interval_for(ttl) < ttl


@given(st.one_of(st.floats(max_value=0), st.just(math.nan), st.floats(min_value=365 * 24 * 3600.0 + 1)))
def test_every_ttl_out_of_range_is_refused(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        Options(ttl=ttl)


@given(st.one_of(st.text(), st.binary(), st.booleans(), st.lists(st.integers()), st.complex_numbers()))
def test_every_non_number_is_a_type_error(value: object) -> None:
    for field in ("ttl", "retry_delay", "refresh_interval"):
        with pytest.raises(TypeError, match=field):
            Options(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tls": 1}, TypeError, "tls must be a bool"),
        ({"tls": True, "ca_file": 3}, TypeError, "ca_file must be a str or os.PathLike"),
        ({"ca_file": __file__}, ValueError, "ca_file needs tls=True"),
        ({"tls": True, "cert_file": __file__}, ValueError, "cert_file and key_file go together"),
        ({"tls": True, "server_name": ""}, ValueError, "server_name must not be empty"),
        ({"username": "u"}, ValueError, "username and password go together"),
        ({"password": "p"}, ValueError, "username and password go together"),
        ({"username": "", "password": "p"}, ValueError, "username must not be empty"),
        ({"username": "u", "password": b"p"}, TypeError, "password must be a str"),
    ],
)
def test_etcd_options_check_the_security_fields(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        EtcdOptions(**kwargs)


def test_etcd_options_take_paths_and_hide_the_password() -> None:
    options = EtcdOptions(tls=True, ca_file=Path(__file__), username="u", password="hunter2")  # type: ignore[arg-type]
    assert options.ca_file == __file__
    assert "hunter2" not in repr(options)
    assert "username='u'" in repr(options)
