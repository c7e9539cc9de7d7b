"""The ``Session`` extension: turns configuration into a session interface."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from collections import ChainMap
from functools import partial
from typing import Any

import flask_session
from flask import Flask, got_request_exception

from .codec import Codec, Migrator
from .config import read_settings
from .exc import ConfigError, SessionUnavailableError
from .interface import DillSessionInterface, request_session
from .session import DillSession
from .stores.base import Store

#: The ``SESSION_TYPE`` values Flask-Session itself serves (handed to it unchanged).
FLASK_SESSION_TYPES = (
    "redis",
    "memcached",
    "filesystem",
    "cachelib",
    "mongodb",
    "sqlalchemy",
    "dynamodb",
)

#: ``SESSION_DILL_BACKEND`` -> its store class, imported when chosen (redis is an extra).
BACKENDS: dict[str, str] = {
    "filesystem": "flask_dill_session.stores.filesystem:FileSystemStore",
    "redis": "flask_dill_session.stores.redis:RedisStore",
    "cachelib": "flask_dill_session.stores.cachelib:CacheLibStore",
}

#: Backends that need a standard-library module some platforms lack: that module, and why.
PLATFORM_NEEDS: dict[str, tuple[str, str]] = {
    "filesystem": (
        "fcntl",
        "it locks session files with fcntl.flock, which only POSIX systems have",
    ),
}


class Session:
    """Server-side sessions for Flask.

    With ``SESSION_TYPE = "dill"`` sessions are serialized with dill into our stores;
    any other ``SESSION_TYPE`` is handed to :class:`flask_session.Session` unchanged.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self.app = app
        self._migrator: Migrator | None = None
        self._codecs: list[Codec] = []
        if app is not None:
            self.init_app(app)

    def migrator(self, migrate: Migrator) -> Migrator:
        """Decorator: ``migrate(data, stored_version) -> data`` upgrades a session stored
        under another ``SESSION_DILL_VERSION`` when it is loaded."""
        self._migrator = migrate
        for codec in self._codecs:
            codec.migrator = migrate
        return migrate

    def init_app(self, app: Flask) -> None:
        """Install the session interface that ``app.config`` asks for: ``SESSION_TYPE``
        unset means ``"dill"``."""
        session_type = _session_type(app.config.get("SESSION_TYPE"))
        if session_type != "dill":
            flask_session.Session().init_app(app)
        else:
            interface = self.create_interface(app)
            interface.codec.migrator = self._migrator
            self._codecs.append(interface.codec)
            app.session_interface = interface
            app.register_error_handler(SessionUnavailableError, interface.handle_unavailable)
            app.teardown_request(partial(_release_lock, app))
            got_request_exception.connect(_mark_failed, app)
        app.extensions["flask_dill_session"] = self

    @staticmethod
    def create_interface(app: Flask) -> DillSessionInterface:
        """Build the :class:`DillSessionInterface` described by ``app.config``; the secret
        is ``app.secret_key``, as Flask reads it (a subclass may define it)."""
        config = ChainMap({"SECRET_KEY": app.secret_key}, app.config)
        settings = read_settings(config, app.instance_path)
        try:
            codec = Codec(
                settings.secret_key,
                settings.secret_key_fallbacks,
                encrypt=settings.encrypt,
                version=settings.version,
                renames=settings.renames,
                app_modules=(app.import_name,),
                max_size=settings.max_size,
            )
        except ImportError as exc:
            raise ConfigError(f"SESSION_DILL_ENCRYPT: {exc}") from None
        store = _backend(settings.backend).from_config(settings, app.config)
        if settings.user_key is not None and not store.supports_index:
            raise ConfigError(
                f"SESSION_DILL_USER_KEY: the {settings.backend} backend keeps no index of"
                " sessions by user; the filesystem and redis backends do"
            )
        return DillSessionInterface(store, codec, settings)


def _session_type(value: object) -> str:
    """``SESSION_TYPE``, lowercased; ``ConfigError`` with a hint for one we do not know."""
    if value is None:
        return "dill"
    name = str(value).lower()
    known = ("dill", *FLASK_SESSION_TYPES)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise ConfigError(f"SESSION_TYPE {value!r} is not one of {', '.join(known)}{hint}")
    return name


def platform_backends() -> list[str]:
    """The backends this platform can run, in :data:`BACKENDS` order (the redis backend
    still needs its extra installed)."""
    return [name for name in BACKENDS if _runs_here(name)]


def _runs_here(name: str) -> bool:
    """Whether this platform has the module that backend *name* needs, if any."""
    need = PLATFORM_NEEDS.get(name)
    if need is None:
        return True
    try:
        importlib.import_module(need[0])
    except ImportError:
        return False
    return True


def _backend(name: str) -> type[Store]:
    """The store class of ``SESSION_DILL_BACKEND`` *name*, imported now; a
    :class:`ConfigError` if the name is unknown or the backend cannot run here."""
    where = BACKENDS.get(name)
    if where is None:
        raise ConfigError(f"SESSION_DILL_BACKEND must be one of {sorted(BACKENDS)}, got {name!r}")
    if not _runs_here(name):
        working = ", ".join(f'"{each}"' for each in platform_backends())
        raise ConfigError(
            f'SESSION_DILL_BACKEND = "{name}" does not work on this platform'
            f" ({sys.platform}): {PLATFORM_NEEDS[name][1]}; backends that work here: {working}"
        )
    try:
        store: type[Store] = pkgutil.resolve_name(where)
    except ImportError as exc:
        raise ConfigError(
            f'SESSION_DILL_BACKEND = "{name}" needs the {exc.name} package:'
            f" pip install flask-dill-session[{name}]"
        ) from None
    return store


def _release_lock(app: Flask, exc: BaseException | None) -> None:
    """Teardown of *app*: release the lock even when ``save_session`` did not run."""
    interface, current = app.session_interface, request_session()
    if isinstance(interface, DillSessionInterface) and isinstance(current, DillSession):
        interface.release(current)


def _mark_failed(sender: Flask, exception: BaseException, **extra: Any) -> None:
    """The request ended in an unhandled exception: its session is not saved, but counted."""
    session = request_session()
    if isinstance(session, DillSession):
        session.failed = True
