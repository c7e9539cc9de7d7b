"""Session stores: bytes with expiry and locks, one module per backend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Entry, Store
from .cachelib import CacheLibStore
from .filesystem import FileSystemStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["CacheLibStore", "Entry", "FileSystemStore", "RedisStore", "Store"]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":  # imported on demand: redis is an optional extra
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
