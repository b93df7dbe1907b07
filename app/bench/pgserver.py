"""A throwaway PostgreSQL server, started from the binaries of Debian's ``postgresql`` package (``initdb``,
``pg_ctl``) in a temporary directory, on a free port of 127.0.0.1, with trust authentication for its one
superuser; each user of it (a store test, a failover bench trial) gets its own database.  One implementation
for the test fixture (``tests/conftest.py``) and ``fedprompt bench failover``.

PostgreSQL refuses to run as root, so under root the server runs as the package's ``postgres`` user (else
``nobody``), in a directory that user owns.  Where the binaries or psycopg are missing, ``start`` returns why:
the tests that need the server are skipped with that reason (``tests/conftest.py`` prints it), and the bench
says it in one line.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

USER = "fedprompt"  # the cluster's superuser
SEARCH = ("/usr/lib/postgresql",)  # Debian keeps each major version's server binaries under <root>/<version>/bin


def free_port() -> int:
    """A port of 127.0.0.1 free right now (picked by the kernel)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else the newest Debian version."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted((p for root in SEARCH for p in Path(root).glob("*/bin") if (p / "pg_ctl").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


@dataclass
class PostgresServer:
    """A running cluster: ``url`` reaches its maintenance database; ``database()`` makes a fresh one."""

    bin: Path
    root: Path
    port: int
    account: pwd.struct_passwd | None  # who runs the server (None: this process's own user)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        account = self.account
        return subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=check,
                              env={**os.environ, "LC_ALL": "C"}, user=account.pw_uid if account else None,
                              group=account.pw_gid if account else None, extra_groups=[] if account else None)

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                            str(self.root / "server.log"), "-w", "-t", "60", "start", check=False)
        if started.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}{log}")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def database(self) -> str:
        """A new empty database's URL."""
        import psycopg

        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop(self, url: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _prerequisites() -> tuple[Path, pwd.struct_passwd | None] | str:
    """The server binaries and the account to run them as, or why there can be none (no binaries, no psycopg)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -c constraints.txt -e '.[postgres]'; make setup does)"
    bin_dir = binaries()
    if bin_dir is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor under /usr/lib/postgresql: "
                "install Debian's postgresql package (make setup does where it runs as root with apt)")
    if os.geteuid() != 0:
        return bin_dir, None
    for name in ("postgres", "nobody"):  # initdb and postgres refuse root
        try:
            return bin_dir, pwd.getpwnam(name)
        except KeyError:
            continue
    return "running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as"


def unavailable() -> str | None:
    """Why no server can be started here, or None when one can (the bench smoke test skips with the reason)."""
    found = _prerequisites()
    return found if isinstance(found, str) else None


def start() -> PostgresServer | str:
    """A started server, or why there can be none (no binaries, no psycopg)."""
    found = _prerequisites()
    if isinstance(found, str):
        return found
    bin_dir, account = found
    root = Path(tempfile.mkdtemp(prefix="fedprompt-pg-"))
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
    server = PostgresServer(bin_dir, root, free_port(), account)
    try:
        server.start()  # binaries that are there but do not start a server fail the tests: no skip hides that
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server
