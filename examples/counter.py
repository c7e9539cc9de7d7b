"""The classic per-user counter, kept in a server-side dill session.

Run:  python examples/counter.py   (serves http://127.0.0.1:5000)

Every ``FLASK_*`` environment variable overrides the config of the same name, e.g.
``FLASK_SESSION_FILE_DIR=/some/dir`` or ``FLASK_SECRET_KEY=...``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from flask import Flask, session

from flask_dill_session import Session


@dataclass
class Cart:
    """A small object kept in the session as it is, methods and all."""

    items: list[str] = field(default_factory=list)

    def add(self, item: str) -> None:
        self.items.append(item)

    def total(self, price: Callable[[str], float]) -> float:
        return sum(price(item) for item in self.items)


def price_list(tax_rate: float) -> Callable[[str], float]:
    """A closure over the tax rate: kept in the session between requests."""

    def price(item: str) -> float:
        return round(len(item) * (1 + tax_rate), 2)

    return price


def instance_secret(app: Flask) -> str:
    """A random secret made once and kept in the instance folder (0600)."""
    path = os.path.join(app.instance_path, "secret_key")
    os.makedirs(app.instance_path, exist_ok=True)
    try:
        with open(path) as file:
            return file.read().strip()
    except FileNotFoundError:
        secret = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secret)
        return secret


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SESSION_TYPE"] = "dill"
    app.config.from_prefixed_env()
    app.config.setdefault("SECRET_KEY", None)
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or instance_secret(app)
    Session(app)

    @app.route("/start_counter")
    def start_counter() -> str:
        session["x"] = 0
        session["started"] = datetime.now()
        return "counter started"

    @app.route("/count")
    def count() -> str:
        if "x" not in session:  # /count before /start_counter: start from 0
            session["started"] = datetime.now()
        session["x"] = session.get("x", 0) + 1
        return f"{session['x']}-{datetime.now()}"

    @app.route("/cart/add/<item>")
    def add_to_cart(item: str) -> str:
        if "cart" not in session:
            session["cart"] = Cart()
            session["price"] = price_list(tax_rate=0.2)
        session["cart"].add(item)  # an in-place change: saved without session.modified
        return f"{len(session['cart'].items)} items"

    @app.route("/cart")
    def show_cart() -> str:
        cart: Cart = session.get("cart", Cart())
        price = session.get("price", price_list(0.0))
        return f"{','.join(cart.items)} = {cart.total(price):.2f}"

    @app.route("/health")
    def health() -> str:
        return "ok"  # never touches the session: no store I/O

    return app


app = create_app()

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
