"""An etcd locker's settings, checked once: endpoints, and what an ``etcd://`` URL says merged with
``EtcdOptions``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..._options import EtcdOptions
from ..._validate import redact_url

__all__ = ["EtcdTarget", "check_client_options", "parse_endpoints", "parse_url"]


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


_URL_FORM = (
    "'etcd://host:port[,host:port...]' (etcds:// for TLS; 'user:password@' before the hosts to authenticate; "
    "query parameters ca_file, cert_file, key_file, server_name)"
)


#: The query parameters of an etcd URL: fields of ``EtcdOptions``.
_URL_PARAMETERS = ("ca_file", "cert_file", "key_file", "server_name")


#: The fields of ``EtcdOptions`` that say how to make a client: they do not apply to a client passed in.
_CONNECTION_FIELDS = ("tls", *_URL_PARAMETERS, "username", "password")


_DEFAULTS = {f.name: f.default for f in fields(EtcdOptions)}


def merged(etcd_options: EtcdOptions | None, settings: dict[str, Any]) -> EtcdOptions:
    """``etcd_options`` with what a URL set; ``ValueError`` where both set a field, differently."""
    if etcd_options is None:
        return EtcdOptions(**settings)
    changes = {}
    for name, value in settings.items():
        mine = getattr(etcd_options, name)
        if mine == value:
            continue
        if name == "tls" and mine:
            raise ValueError("etcd_options.tls is True but the URL is etcd://; use etcds://")
        if mine != _DEFAULTS[name]:
            shown = "the URL's password" if name == "password" else f"the URL's {value!r}"
            raise ValueError(f"etcd_options.{name} contradicts {shown}; set it in one place")
        changes[name] = value
    return replace(etcd_options, **changes) if changes else etcd_options


def check_client_options(etcd_options: EtcdOptions | None) -> None:
    """``ValueError`` if ``etcd_options`` set how to make a client, for a locker given a client of its own."""
    if etcd_options is None:
        return
    given = [name for name in _CONNECTION_FIELDS if getattr(etcd_options, name) != _DEFAULTS[name]]
    if given:
        raise ValueError(
            f"EtcdOptions.{given[0]} applies to a client the locker makes (connect(), from_url()); "
            "set up the aetcd.Client you pass yourself"
        )


@dataclass(frozen=True)
class EtcdTarget:
    """What an ``etcd://`` URL says: the members to connect to, and the options with the URL's settings."""

    endpoints: list[tuple[str, int]]
    options: EtcdOptions


def parse_url(url: str, etcd_options: EtcdOptions | None) -> EtcdTarget:
    """Read ``url`` (see ``EtcdLocker.from_url``) into the endpoints and ``etcd_options`` merged with it."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"etcd URLs look like {_URL_FORM}, got {redact_url(url)!r} ({exc})") from None
    scheme = parts.scheme.lower()
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if scheme not in ("etcd", "etcds") or parts.path not in ("", "/") or parts.fragment or not hosts:
        raise ValueError(f"etcd URLs look like {_URL_FORM}, got {redact_url(url)!r}")
    settings: dict[str, Any] = {"tls": scheme == "etcds"}
    if at:
        username, colon, password = userinfo.partition(":")
        if not colon or not username:
            raise ValueError(f"an etcd URL's credentials look like 'user:password@', got {redact_url(url)!r}")
        settings["username"], settings["password"] = unquote(username), unquote(password)
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"etcd URL query must be 'name=value&...', got {parts.query!r}") from None
    for name, value in query:
        if name not in _URL_PARAMETERS:
            unknown = sorted({name for name, _ in query} - set(_URL_PARAMETERS))
            raise ValueError(f"unknown etcd URL parameter(s) {', '.join(unknown)}; known: {', '.join(_URL_PARAMETERS)}")
        if name in settings:
            raise ValueError(f"etcd URL parameter {name} is given twice")
        settings[name] = value
    endpoints = parse_endpoints(hosts.split(","))
    endpoints = parse_endpoints(hosts.split(","))
    return EtcdTarget(endpoints, merged(etcd_options, settings))
