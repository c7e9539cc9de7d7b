"""An app with Flask-Login and Flask-WTF's CSRF protection, for the extension tests.

Configuration comes from ``FLASK_*`` environment variables (``FLASK_SECRET_KEY``,
``FLASK_SESSION_FILE_DIR``, ``FLASK_SESSION_PROTECTION=strong``,
``FLASK_SESSION_PERMANENT=false``, ...), then from the *config* given to
:func:`create_app`. Routes:

- ``GET /login``: the login form; ``POST /login`` (``username``, ``remember``, CSRF):
  log in and give the session a new id;
- ``GET /me``: ``"<user> fresh=<bool> <pid>"`` for a logged-in user, else 401;
- ``GET /note``: the note form; ``POST /note`` (``text``, CSRF): keep a note in the session;
- ``GET /notes``: the notes, one per line;
- ``POST /search`` (``q``, CSRF): a form post that changes nothing in the session;
- ``POST /logout`` (CSRF): delete the session, then log out (which clears the remember
  cookie);
- ``GET /health``: never touches the session.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, render_template_string, request, session
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)
from flask_wtf import CSRFProtect, FlaskForm
from wtforms import BooleanField, StringField
from wtforms.validators import DataRequired

from flask_dill_session import DillSession, Session

USERS = ("alice", "bob")
FORM = "<form method=post>{{ form.csrf_token }}</form>"


class User(UserMixin):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        self.id = name


class LoginForm(FlaskForm):  # type: ignore[misc]
    username = StringField(validators=[DataRequired()])
    remember = BooleanField()


class NoteForm(FlaskForm):  # type: ignore[misc]
    text = StringField(validators=[DataRequired()])


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SESSION_TYPE"] = "dill"
    app.config.from_prefixed_env()
    app.config.update(config or {})
    Session(app)
    CSRFProtect(app)
    logins = LoginManager(app)

    @logins.user_loader  # type: ignore[untyped-decorator]
    def load_user(name: str) -> User | None:
        return User(name) if name in USERS else None

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        form = LoginForm()
        if not form.validate_on_submit():
            if form.is_submitted():
                return {"errors": form.errors}, 400
            return render_template_string(FORM, form=form)
        if form.username.data not in USERS:
            return "unknown user", 403
        login_user(User(form.username.data), remember=form.remember.data)
        assert isinstance(session, DillSession)
        app.session_interface.regenerate(session)  # type: ignore[attr-defined]
        return f"welcome {form.username.data}"

    @app.route("/me")
    @login_required  # type: ignore[untyped-decorator]
    def me() -> str:
        fresh = session.get("_fresh", False)
        return f"{current_user.id} fresh={fresh} {os.getpid()}"

    @app.route("/note", methods=["GET", "POST"])
    @login_required  # type: ignore[untyped-decorator]
    def note() -> Any:
        form = NoteForm()
        if form.validate_on_submit():
            session.setdefault("notes", []).append(form.text.data)
            return "noted"
        return render_template_string(FORM, form=form)

    @app.route("/notes")
    @login_required  # type: ignore[untyped-decorator]
    def notes() -> str:
        return "\n".join(session.get("notes", []))

    @app.post("/search")
    @login_required  # type: ignore[untyped-decorator]
    def search() -> str:
        return f"results for {request.form.get('q', '')}"

    @app.post("/logout")
    def logout() -> str:
        assert isinstance(session, DillSession)
        app.session_interface.destroy(session)  # type: ignore[attr-defined]
        logout_user()  # after destroy: its order to clear the remember cookie is kept
        return "bye"

    @app.route("/health")
    def health() -> str:
        return "ok"

    return app
