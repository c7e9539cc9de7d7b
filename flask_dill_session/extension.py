"""The ``Session`` extension: turns configuration into a session interface."""

from __future__ import annotations

import logging
from collections.abc import Callable

import flask_session
from flask import Flask, current_app
from flask.globals import request_ctx

from .codec import Codec, Migrator
from .config import Settings, read_cachelib_cache, read_redis_client, read_settings
from .exc import ConfigError
from .interface import DillSessionInterface
from .session import DillSession
from .stores.base import Store
from .stores.filesystem import FileSystemStore

logger = logging.getLogger("flask_dill_session")


def _filesystem(app: Flask, settings: Settings) -> Store:
    return FileSystemStore(
        settings.file_dir, lock_timeout=settings.lock_timeout, fsync=settings.fsync
    )


def _redis(app: Flask, settings: Settings) -> Store:
    client = read_redis_client(app.config)
    from .stores.redis import RedisStore  # here, so that redis stays an optional extra

    try:
        store = RedisStore(
            client,
            lock_timeout=settings.lock_timeout,
            lock_lease=settings.lock_lease,
            quarantine_prefix=f"quarantine:{settings.key_prefix}",
        )
    except ConfigError as exc:
        raise ConfigError(f"SESSION_REDIS: {exc}") from None
    if client.connection_pool.connection_kwargs.get("socket_timeout") is None:
        logger.warning(
            "SESSION_REDIS has no socket_timeout: requests will hang while Redis at %s does"
            " not answer; give the client socket_timeout and socket_connect_timeout",
            store.address,
        )
    return store


def _cachelib(app: Flask, settings: Settings) -> Store:
    from .stores.cachelib import CacheLibStore

    cache = read_cachelib_cache(app.config)
    if settings.locking:
        logger.warning(
            "SESSION_DILL_LOCKING is on, but the cachelib backend (%s) has no locks:"
            " concurrent requests of one session may lose updates; use the filesystem or"
            " redis backend for locking, or set SESSION_DILL_LOCKING = False",
            type(cache).__name__,
        )
    return CacheLibStore(cache, quarantine_prefix=f"quarantine:{settings.key_prefix}")


#: ``SESSION_DILL_BACKEND`` name -> factory of the store.
BACKENDS: dict[str, Callable[[Flask, Settings], Store]] = {
    "filesystem": _filesystem,
    "redis": _redis,
    "cachelib": _cachelib,
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
        """Install the session interface that ``app.config`` asks for."""
        session_type = str(app.config.get("SESSION_TYPE", "null")).lower()
        if session_type != "dill":
            flask_session.Session().init_app(app)
        else:
            interface = self.create_interface(app)
            interface.codec.migrator = self._migrator
            self._codecs.append(interface.codec)
            app.session_interface = interface
            app.teardown_request(_release_lock)
        app.extensions["flask_dill_session"] = self

    @staticmethod
    def create_interface(app: Flask) -> DillSessionInterface:
        """Build the :class:`DillSessionInterface` described by ``app.config``."""
        settings = read_settings(app.config, app.instance_path)
        factory = BACKENDS.get(settings.backend)
        if factory is None:
            raise ConfigError(
                f"SESSION_DILL_BACKEND must be one of {sorted(BACKENDS)}, got {settings.backend!r}"
            )
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
        return DillSessionInterface(
            factory(app, settings),
            codec,
            key_prefix=settings.key_prefix,
            sid_length=settings.sid_length,
            permanent=settings.permanent,
            locking=settings.locking,
            absolute_lifetime=settings.absolute_lifetime,
            quarantine_lifetime=settings.quarantine_lifetime,
        )


def _release_lock(exc: BaseException | None) -> None:
    """Teardown: release the lock even when ``save_session`` did not run."""
    interface, current = current_app.session_interface, request_ctx.session
    if isinstance(interface, DillSessionInterface) and isinstance(current, DillSession):
        interface.release(current)
