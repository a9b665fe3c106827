"""A throw-away PostgreSQL server for tests: Debian's binaries, a free loopback port, its own data
folder, stopped (and killable) by the test.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user the Debian
package creates (``runuser``); as anyone else it runs as that user. ``skip_reason()`` says why it
cannot run here (no binaries, no such user), for ``pytest.skip``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def skip_reason() -> str | None:
    if _bin_dir() is None:
        return "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; scripts/install-system.sh installs Debian's postgresql)"
    if os.getuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
        if not shutil.which("runuser"):
            return "running as root without runuser to start PostgreSQL as the 'postgres' user"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    USER = "deepfake"
    DATABASE = "records"

    def __init__(self):
        self.bin = _bin_dir()
        self.port = free_port()
        # not under pytest's 0700 tmp tree: the postgres user must reach it
        self.root = Path(tempfile.mkdtemp(prefix="deepfake-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        if os.getuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{self.DATABASE}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=check, cwd=self.root)

    def init(self) -> "PostgresServer":
        self._run("initdb", "-D", str(self.data), "-U", self.USER, "-A", "trust", "--no-sync", "-E", "UTF8")
        self.start()
        self.createdb(self.DATABASE)
        return self

    def createdb(self, name: str) -> str:
        """Another empty database on this server; returns its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER, name)
        return self.url.rsplit("/", 1)[0] + "/" + name

    def start(self) -> None:
        # loopback TCP only; the socket folder is ours, not /var/run/postgresql
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{self.log.read_text() if self.log.exists() else ''}")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def kill(self) -> None:
        """Stop without a clean shutdown: clients see connections drop, as in a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
