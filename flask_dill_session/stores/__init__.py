"""Session stores: bytes with expiry and locks, one module per backend."""

from .base import Entry, Store
from .filesystem import FileSystemStore

__all__ = ["Entry", "FileSystemStore", "Store"]
