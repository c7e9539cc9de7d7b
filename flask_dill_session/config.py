"""Reading and checking the ``SESSION_*`` configuration; every error names its key."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .exc import ConfigError

if TYPE_CHECKING:
    from cachelib.base import BaseCache
    from redis import Redis

_DAY = 86400.0


@dataclass(frozen=True)
class Settings:
    """The configuration of one application's dill sessions, checked."""

    backend: str
    secret_key: str | bytes
    secret_key_fallbacks: tuple[str | bytes, ...]
    key_prefix: str
    sid_length: int
    permanent: bool
    locking: bool
    lock_timeout: float
    lock_lease: float
    absolute_lifetime: float | None
    max_size: int | None
    quarantine_lifetime: float
    file_dir: str
    fsync: bool
    version: str | None
    renames: dict[str, str]
    encrypt: bool


def read_settings(config: Mapping[str, Any], instance_path: str) -> Settings:
    """Build :class:`Settings` from a Flask config, raising :class:`ConfigError`."""
    secret = config.get("SECRET_KEY")
    if not secret or not isinstance(secret, (str, bytes)):
        raise ConfigError("SECRET_KEY must be set: stored sessions are authenticated with it")
    fallbacks = config.get("SECRET_KEY_FALLBACKS") or ()
    # A lone string would be iterated into one-character keys that anyone can guess.
    if not isinstance(fallbacks, (list, tuple)) or not all(
        isinstance(key, (str, bytes)) and key for key in fallbacks
    ):
        raise ConfigError("SECRET_KEY_FALLBACKS must be a list of non-empty str or bytes")
    sid_length = _integer(config, "SESSION_ID_LENGTH", 32)
    if sid_length < 16:
        raise ConfigError(f"SESSION_ID_LENGTH must be at least 16 bytes, got {sid_length}")
    prefix = config.get("SESSION_KEY_PREFIX", "session:")
    if not isinstance(prefix, str):
        raise ConfigError(f"SESSION_KEY_PREFIX must be a str, got {type(prefix).__name__}")
    backend = config.get("SESSION_DILL_BACKEND", "filesystem")
    if not isinstance(backend, str):
        raise ConfigError(f"SESSION_DILL_BACKEND must be a str, got {type(backend).__name__}")
    file_dir = config.get("SESSION_FILE_DIR") or os.path.join(instance_path, "flask_dill_session")
    if not isinstance(file_dir, (str, os.PathLike)):
        raise ConfigError(f"SESSION_FILE_DIR must be a path, got {type(file_dir).__name__}")
    return Settings(
        backend=backend.lower(),
        secret_key=secret,
        secret_key_fallbacks=tuple(fallbacks),
        key_prefix=prefix,
        sid_length=sid_length,
        permanent=_flag(config, "SESSION_PERMANENT", True),
        locking=_flag(config, "SESSION_DILL_LOCKING", True),
        lock_timeout=_seconds(config, "SESSION_DILL_LOCK_TIMEOUT", 10.0),
        lock_lease=_seconds(config, "SESSION_DILL_LOCK_LEASE", 60.0),
        absolute_lifetime=_seconds(config, "SESSION_DILL_ABSOLUTE_LIFETIME", 7 * _DAY, none=True),
        max_size=_integer(config, "SESSION_DILL_MAX_SIZE", 1 << 20, none=True),
        quarantine_lifetime=_seconds(config, "SESSION_DILL_QUARANTINE_LIFETIME", 7 * _DAY),
        file_dir=os.fspath(file_dir),
        fsync=_flag(config, "SESSION_DILL_FSYNC", False),
        version=_version(config),
        renames=_renames(config),
        encrypt=_flag(config, "SESSION_DILL_ENCRYPT", False),
    )


def read_redis_client(config: Mapping[str, Any]) -> Redis:
    """``SESSION_REDIS``: a :class:`redis.Redis` client; never a default connection."""
    client = config.get("SESSION_REDIS")
    if client is None:
        raise ConfigError(
            "SESSION_REDIS must be set to a redis.Redis client when SESSION_DILL_BACKEND is"
            ' "redis" (no default host is assumed), e.g. redis.Redis.from_url(url,'
            " socket_timeout=2, socket_connect_timeout=2)"
        )
    try:
        import redis
    except ImportError:
        raise ConfigError(
            'SESSION_DILL_BACKEND = "redis" needs the redis package:'
            " pip install flask-dill-session[redis]"
        ) from None
    if not isinstance(client, redis.Redis):
        raise ConfigError(
            f"SESSION_REDIS must be a redis.Redis client, got {type(client).__name__}"
        )
    return client


def read_cachelib_cache(config: Mapping[str, Any]) -> BaseCache:
    """``SESSION_CACHELIB``: any :class:`cachelib.base.BaseCache`."""
    from cachelib.base import BaseCache

    cache = config.get("SESSION_CACHELIB")
    if not isinstance(cache, BaseCache):
        raise ConfigError(
            "SESSION_CACHELIB must be a cachelib cache (a cachelib.base.BaseCache) when"
            f' SESSION_DILL_BACKEND is "cachelib", got {type(cache).__name__}'
        )
    return cache


def _version(config: Mapping[str, Any]) -> str | None:
    version = config.get("SESSION_DILL_VERSION")
    if version is None:
        return None
    if not isinstance(version, str) or not version or len(version.encode()) > 255:
        raise ConfigError(
            f"SESSION_DILL_VERSION must be None or a non-empty str of at most 255 bytes,"
            f" got {version!r}"
        )
    return version


def _renames(config: Mapping[str, Any]) -> dict[str, str]:
    renames = config.get("SESSION_DILL_RENAMES") or {}
    if not isinstance(renames, Mapping) or not all(
        isinstance(old, str) and isinstance(new, str) and old and new
        for old, new in renames.items()
    ):
        raise ConfigError(
            "SESSION_DILL_RENAMES must map old qualified names to new ones, e.g."
            ' {"old.module.Cart": "shop.cart.Cart"}'
        )
    return dict(renames)


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be True or False, got {value!r}")
    return value


def _integer(config: Mapping[str, Any], key: str, default: int, none: bool = False) -> Any:
    value = config.get(key, default)
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        allowed = "a positive int" + (" or None" if none else "")
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    return value


def _seconds(config: Mapping[str, Any], key: str, default: float, none: bool = False) -> Any:
    value = config.get(key, default)
    if value is None and none:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        allowed = "a positive number of seconds or a timedelta" + (", or None" if none else "")
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    return float(value)
