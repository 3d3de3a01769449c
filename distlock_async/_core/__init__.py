"""What every backend shares, written once: the retry loop, the one concrete Lock, the refresher,
the ``lock()`` context manager and shielded cleanup. Backends plug in through :mod:`._driver`."""
