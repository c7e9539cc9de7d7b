"""Session stores: bytes with expiry and locks, one module per backend.

The filesystem store needs ``fcntl`` (POSIX only) and the Redis store the ``redis`` extra,
so both are imported on first use: importing this package works on every platform.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import Entry, Store
from .cachelib import CacheLibStore

if TYPE_CHECKING:
    from .filesystem import FileSystemStore
    from .redis import RedisStore

__all__ = ["CacheLibStore", "Entry", "FileSystemStore", "RedisStore", "Store"]

#: Store classes imported on demand, and their modules.
_LAZY = {"FileSystemStore": ".filesystem", "RedisStore": ".redis"}


def __getattr__(name: str) -> Any:
    """Import ``FileSystemStore`` or ``RedisStore`` when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
