"""A throwaway PostgreSQL server on 127.0.0.1 for tests: initdb + pg_ctl in a temp folder.

Import the fixtures into a test module (`from postgres_server import postgres, postgres_db`).
They skip only where no PostgreSQL binaries exist (on PATH or Debian's /usr/lib/postgresql/*/bin;
`.ci/run` installs the Debian package).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "optuna"
# A comma and a colon: the password must survive a Hydra override and a URL (see docs/sweeps.md).
PASSWORD = "s3cret,pw:9"


def find_bindir() -> Path | None:
    """The folder holding initdb/pg_ctl/postgres: PATH first, then the newest Debian install."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return debian[-1].parent if debian else None


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    """A running server: connect as USER/PASSWORD on 127.0.0.1:port."""

    bindir: Path
    port: int
    env: dict[str, str]

    def url(
        self, db: str, password: str = PASSWORD, port: int | None = None, driver: str = "psycopg2"
    ) -> str:
        """A SQLAlchemy URL for database `db` (the password as is: Hydra and SQLAlchemy take it so)."""
        return f"postgresql+{driver}://{USER}:{password}@127.0.0.1:{port or self.port}/{db}"

    def createdb(self, name: str) -> None:
        """Create database `name` owned by USER."""
        subprocess.run(
            [self.bindir / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name],
            env=self.env,
            check=True,
            capture_output=True,
        )


def _runuser() -> str | None:
    """util-linux's runuser; it lives in /usr/sbin, which a minimal PATH (env -i, cron) leaves out."""
    return shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _as_owner(owner: str | None, cmd: list[str | Path]) -> list[str]:
    """`cmd` run as `owner` (initdb and postgres refuse to run as root)."""
    cmd = [str(c) for c in cmd]
    return [_runuser() or "runuser", "-u", owner, "--", *cmd] if owner else cmd


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Start a PostgreSQL server for the session; stop it and delete its files at the end."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL binaries (initdb) on PATH or in /usr/lib/postgresql/*/bin; apt-get install postgresql"
        )
    owner = None
    if os.geteuid() == 0:
        owner = "postgres" if _user_exists("postgres") else "nobody"
        if _runuser() is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as `owner`.
    root = Path(tempfile.mkdtemp(prefix="captioner-pg-"))
    if owner:
        shutil.chown(root, owner)
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if owner:
        shutil.chown(pwfile, owner)
    port = free_port()
    env = {**os.environ, "PGPASSWORD": PASSWORD, "LC_ALL": "C"}
    run = dict(env=env, check=True, capture_output=True, cwd=root)
    initdb = [bindir / "initdb", "-D", data, "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256"]
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"  # fsync off: a test server, fast
    try:
        subprocess.run(_as_owner(owner, [*initdb, "-E", "UTF8"]), **run)
        subprocess.run(
            _as_owner(
                owner, [bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o", options, "start"]
            ),
            **run,
        )
    except subprocess.CalledProcessError as err:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise AssertionError(f"PostgreSQL did not start: {err.stderr.decode()}\n{log}") from err
    yield Postgres(bindir, port, env)
    subprocess.run(
        _as_owner(owner, [bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"]),
        env=env,
        capture_output=True,
        cwd=root,
    )
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres: Postgres) -> str:
    """A fresh database on the session's server; its URL (with the password)."""
    name = f"t{uuid.uuid4().hex[:10]}"
    postgres.createdb(name)
    return postgres.url(name)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
