"""The ``SESSION_*`` configuration: one table of keys, their defaults and checks.

:class:`Settings`' field defaults are the package's defaults (stores and the interface
take theirs from :data:`DEFAULTS`); :data:`KEYS` maps each config key to its field and
its check. Every error is a :class:`ConfigError` that names the key. Knows no Flask.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal

from .exc import ConfigError

DAY = 86400.0


@dataclass(frozen=True)
class Settings:
    """The checked configuration of one app's dill sessions; the defaults are the table."""

    secret_key: str | bytes = field(default="", repr=False)
    secret_key_fallbacks: tuple[str | bytes, ...] = field(default=(), repr=False)
    backend: str = "filesystem"
    key_prefix: str = "session:"
    sid_length: int = 32
    permanent: bool = True
    locking: bool | Literal["writes"] = True
    lock_timeout: float = 10.0
    lock_lease: float = 60.0
    absolute_lifetime: float | None = 7 * DAY
    max_size: int | None = 1 << 20
    quarantine_lifetime: float = 7 * DAY
    poison_after: int | None = 3
    file_dir: str = ""  # empty: <instance_path>/flask_dill_session
    fsync: bool = False
    version: str | None = None
    renames: Mapping[str, str] = field(default_factory=dict)
    encrypt: bool = False
    user_key: str | None = None  # the session key naming the user, for the user index
    rotation_grace: float | None = 10.0  # seconds an id replaced by regenerate stays readable
    redis_wait: tuple[int, int] | None = None  # (replicas, ms) to WAIT for after a write


DEFAULTS = Settings()

Check = Callable[[str, Any], Any]


def _secret(key: str, value: Any) -> str | bytes:
    if not value or not isinstance(value, (str, bytes)):
        raise ConfigError(
            f"{key} (app.secret_key) must be set: stored sessions are authenticated with it"
        )
    return value


def _fallbacks(key: str, value: Any) -> tuple[str | bytes, ...]:
    # A lone string would be iterated into one-character keys that anyone can guess.
    value = value or ()
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(each, (str, bytes)) and each for each in value
    ):
        raise ConfigError(f"{key} must be a list of non-empty str or bytes")
    return tuple(value)


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a str, got {type(value).__name__}")
    return value.lower()


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a str, got {type(value).__name__}")
    return value


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be True or False, got {value!r}")
    return value


def _locking(key: str, value: Any) -> bool | Literal["writes"]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() == "writes":
        return "writes"
    raise ConfigError(f'{key} must be True, False or "writes", got {value!r}')


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key} must be a positive int, got {value!r}")
    return value


def _sid_length(key: str, value: Any) -> int:
    if _count(key, value) < 16:
        raise ConfigError(f"{key} must be at least 16 bytes, got {value}")
    return int(value)


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(
            f"{key} must be a positive number of seconds or a timedelta, got {value!r}"
        )
    return float(value)


def _or_none(check: Check) -> Check:
    def checked(key: str, value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or None to disable") from None

    return checked


def _path(key: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{key} must be a path, got {type(value).__name__}")
    return os.fspath(value)


def _version(key: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or len(value.encode()) > 255):
        raise ConfigError(
            f"{key} must be None or a non-empty str of at most 255 bytes, got {value!r}"
        )
    return value


def _renames(key: str, value: Any) -> dict[str, str]:
    value = value or {}
    if not isinstance(value, Mapping) or not all(
        isinstance(old, str) and isinstance(new, str) and old and new for old, new in value.items()
    ):
        raise ConfigError(
            f"{key} must map old qualified names to new ones,"
            ' e.g. {"shop.Cart": "shop.cart.Cart"}'
        )
    return dict(value)


def _wait(key: str, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    if not ok or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value):
        raise ConfigError(
            f"{key} must be None or (replicas, milliseconds), two positive ints such as"
            f" (1, 100), got {value!r}"
        )
    return (value[0], value[1])


#: Config key -> (:class:`Settings` field, check). A key not in the config keeps the default.
#: The extension passes ``SECRET_KEY`` as Flask reads it, ``app.secret_key`` (which a Flask
#: subclass may define), and ``SECRET_KEY_FALLBACKS`` from the config, as Flask does.
KEYS: dict[str, tuple[str, Check]] = {
    "SECRET_KEY": ("secret_key", _secret),
    "SECRET_KEY_FALLBACKS": ("secret_key_fallbacks", _fallbacks),
    "SESSION_DILL_BACKEND": ("backend", _name),
    "SESSION_KEY_PREFIX": ("key_prefix", _text),
    "SESSION_ID_LENGTH": ("sid_length", _sid_length),
    "SESSION_PERMANENT": ("permanent", _flag),
    "SESSION_DILL_LOCKING": ("locking", _locking),
    "SESSION_DILL_LOCK_TIMEOUT": ("lock_timeout", _seconds),
    "SESSION_DILL_LOCK_LEASE": ("lock_lease", _seconds),
    "SESSION_DILL_ABSOLUTE_LIFETIME": ("absolute_lifetime", _or_none(_seconds)),
    "SESSION_DILL_MAX_SIZE": ("max_size", _or_none(_count)),
    "SESSION_DILL_QUARANTINE_LIFETIME": ("quarantine_lifetime", _seconds),
    "SESSION_DILL_POISON_AFTER": ("poison_after", _or_none(_count)),
    "SESSION_FILE_DIR": ("file_dir", _path),
    "SESSION_DILL_FSYNC": ("fsync", _flag),
    "SESSION_DILL_VERSION": ("version", _version),
    "SESSION_DILL_RENAMES": ("renames", _renames),
    "SESSION_DILL_ENCRYPT": ("encrypt", _flag),
    "SESSION_DILL_USER_KEY": ("user_key", _or_none(_text)),
    "SESSION_DILL_ROTATION_GRACE": ("rotation_grace", _or_none(_seconds)),
    "SESSION_DILL_REDIS_WAIT": ("redis_wait", _wait),
}


def read_settings(config: Mapping[str, Any], instance_path: str) -> Settings:
    """Check every key of :data:`KEYS` that *config* sets, raising :class:`ConfigError`."""
    values = {name: check(key, config[key]) for key, (name, check) in KEYS.items() if key in config}
    settings = Settings(**values)
    if not settings.secret_key:
        _secret("SECRET_KEY", None)
    if not settings.file_dir:
        settings = replace(settings, file_dir=os.path.join(instance_path, "flask_dill_session"))
    return settings
