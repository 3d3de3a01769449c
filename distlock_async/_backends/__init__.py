"""Backends: each implements the private driver interface of ``distlock_async._core._driver``."""
