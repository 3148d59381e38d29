"""The study's storage: opened with retries for transient errors, one line for permanent ones, password hidden.

A permanent error (wrong password, missing database or role, missing driver, bad URL) will not
heal by waiting, so it fails at once; a server that is starting, refusing connections for a
moment or a SQLite file locked by another worker is retried for up to `RETRY_S` seconds.
"""

import logging
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote as url_quote

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from captioner.errors import ConfigError

log = logging.getLogger(__name__)

# Bounded wait for transient errors: long enough for a database server to start or fail over.
RETRY_S = 30.0

# Phrases of errors that waiting will not fix (PostgreSQL, MySQL and SQLite wording).
PERMANENT = {
    "password authentication failed": "check the user and password (or ~/.pgpass)",
    "authentication failed": "check the user and password (or ~/.pgpass)",
    "access denied": "check the user and password",
    "no pg_hba.conf entry": "allow this host in the server's pg_hba.conf",
    "does not exist": "create it (e.g. createdb NAME) or fix the URL",
    "unknown database": "create it or fix the URL",
    "unable to open database file": "make the SQLite file's folder exist and writable",
    "could not translate host name": "fix the host name in the URL",
    "name or service not known": "fix the host name in the URL",
}

# Driver modules whose pip package has another name.
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient", "pymysql": "PyMySQL"}

T = TypeVar("T")


def mask(url: str) -> str:
    """`url` with its password shown as ***, for logs and saved configs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url  # not a URL: nothing we can parse holds a password


def password(url: str | None) -> str | None:
    """The password in `url`, if any."""
    if not url:
        return None
    try:
        return make_url(url).password
    except sqlalchemy.exc.ArgumentError:
        return None


def scrub(text: str, url: str | None) -> str:
    """`text` with the password of `url` (plain or percent-encoded) replaced by ***."""
    secret = password(url)
    if secret:
        for form in {secret, url_quote(secret, safe=""), url_quote(secret)}:
            text = text.replace(form, "***")
    return text


def first_line(err: BaseException) -> str:
    """The driver's own first line of an error (SQLAlchemy wraps it with SQL and a help link)."""
    orig = getattr(err, "orig", None) or err
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def permanent_fix(err: BaseException) -> tuple[str, str] | None:
    """(cause, fix) when `err` will not go away by retrying; None for a transient error."""
    if isinstance(err, ImportError):
        missing = err.__cause__ if isinstance(err.__cause__, ImportError) else err
        module = (getattr(missing, "name", None) or "the driver").split(".")[0]
        package = DRIVER_PACKAGES.get(module, module)
        return f"its database driver {module} is not installed", f"pip install {package}"
    if isinstance(err, sqlalchemy.exc.ArgumentError | sqlalchemy.exc.NoSuchModuleError):
        return first_line(err), "write it as dialect+driver://user@host:port/database"
    text = str(getattr(err, "orig", None) or err).lower()
    for phrase, fix in PERMANENT.items():
        if phrase in text:
            return first_line(err), fix
    if isinstance(err, sqlalchemy.exc.SQLAlchemyError | optuna.exceptions.StorageInternalError):
        return None  # connection refused, server starting, database locked, a racing insert
    return first_line(err), "fix the storage URL"


def retry(action: Callable[[], T], url: str, what: str) -> T:
    """Run `action` on the storage at `url`: transient errors are retried for RETRY_S seconds,
    permanent ones (and the last transient one) raise a one-line ConfigError."""
    deadline = time.monotonic() + RETRY_S
    delay, failures = 0.25, 0
    while True:
        try:
            return action()
        except Exception as err:
            fix = permanent_fix(err)
            shown = f"hydra.sweeper.storage {mask(url)}"
            if fix is not None:
                cause, remedy = fix
                raise ConfigError(scrub(f"{shown}: {what} failed: {cause}; {remedy}", url)) from None
            if time.monotonic() + delay > deadline:
                raise ConfigError(
                    scrub(
                        f"{shown}: {what} failed for {RETRY_S:.0f} s: {first_line(err)}; "
                        "start the database server or fix host and port",
                        url,
                    )
                ) from None
            failures += 1
            if failures == 2:  # one failure is usually a benign race with a worker started alongside
                log.warning(scrub(f"{shown}: {first_line(err)}; retrying for up to {RETRY_S:.0f} s", url))
            time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: workers started together spread out
            delay = min(2 * delay, 4.0)


def make_storage(
    url: str | None, heartbeat_interval: int | None = None
) -> optuna.storages.BaseStorage | None:
    """An RDBStorage for `url` that tolerates several processes on one SQLite file; None: in memory."""
    if url is None:
        return None
    try:
        driver = make_url(url).get_driver_name()
    except sqlalchemy.exc.ArgumentError:
        # Not shown: an unparsable URL may still hold a password.
        raise ConfigError(
            "hydra.sweeper.storage: not a database URL; write it as "
            "dialect+driver://user:password@host:port/database or sqlite:///path"
        ) from None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        try:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"hydra.sweeper.storage {url}: cannot create its folder ({err.strerror}); pick a writable path"
            ) from None
        # Workers share the file: wait for its lock instead of failing with "database is locked".
        engine_kwargs["connect_args"] = {"timeout": 30}
    else:
        # A server restarted between two trials leaves dead pooled connections: test before use.
        engine_kwargs["pool_pre_ping"] = True
        if driver == "psycopg2":
            engine_kwargs["connect_args"] = {"connect_timeout": 10}  # a dropped SYN must not hang for minutes
    hb = (
        {"heartbeat_interval": heartbeat_interval, "grace_period": 2 * heartbeat_interval}
        if heartbeat_interval
        else {}
    )

    def connect() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            # Heartbeats have been "experimental" since Optuna 2.9; we rely on them knowingly.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Workers started together race to create the tables; the loser sees them on the next try.
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **hb)

    return retry(connect, url, "opening the study database")
