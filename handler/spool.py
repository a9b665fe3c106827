"""The prediction records' spool: a local journal every record passes through on its way to the store.

A worker appends each batch's rows here before its answers leave (``append``, one SQLite transaction),
so a worker killed after answering has already kept what it answered; one process at a time
(``replaying``) reads the oldest rows (``oldest``), inserts them into the store and deletes them
(``delivered``). While the store fails, the rows simply stay: ``hold`` marks them, and rows appended
during the outage, as spooled, and a later delivery counts them as replayed. The spool is bounded in
bytes of row data; ``append`` takes what fits and says how much.

Why SQLite and not an append-only file: several worker processes append to one spool while one of
them replays it. SQLite gives each append and each delete a transaction across processes, keeps the
order (rising row ids), and a process killed mid-write leaves no torn line to repair and no offset
file to keep in step. WAL with ``synchronous=NORMAL``: a commit is in the OS's hands when ``append``
returns, so it survives the process being killed (not a power cut, which can take the last commits
since the last checkpoint). Python's own ``sqlite3``: no dependency, and little overhead on the
answer's path.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

# Ids are rowids: a new row gets one more than the largest in the table, and rows leave oldest
# first, so ids rise in the order rows were appended, and a range ``oldest`` read is never joined by a
# later row (AUTOINCREMENT would add a page write to every append for nothing more).
SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY,                -- the order rows are replayed in (see below)
    payload TEXT NOT NULL,                 -- the row as JSON
    held INTEGER NOT NULL                  -- 1: kept back by a store outage (spooled)
);
CREATE TABLE IF NOT EXISTS state (         -- one row: the totals, kept in step by each transaction
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    store_down INTEGER NOT NULL,           -- the last delivery failed
    store TEXT NOT NULL                    -- where the rows go (password hidden), for people
);
"""


class Spool:
    """One spool file; safe to share between threads (a connection each) and processes."""

    def __init__(self, path: str | Path, max_bytes: int, store: str = "", busy_timeout_s: float = 2.0):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.busy_timeout_s = busy_timeout_s  # how long an append waits for another process's write
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._replay_lock = open(self.path.with_name(self.path.name + ".lock"), "a+")  # noqa: SIM115 (held for the spool's life)
        connection = self._connection()
        connection.executescript(SCHEMA)
        connection.execute("INSERT OR IGNORE INTO state VALUES (1, 0, 0, 0, ?)", (store,))

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # autocommit mode: every transaction below is an explicit BEGIN IMMEDIATE ... COMMIT
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            # no checkpoint (and its fsync) on the answer's path: the writer thread runs them (checkpoint)
            connection.execute("PRAGMA wal_autocheckpoint=0")
            self._local.connection = connection
            self._connections.append(connection)
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")  # the write lock up front: no upgrade deadlock between processes
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def append(self, payloads: list[str]) -> tuple[int, bool, int]:
        """Journal rows (ASCII JSON) in order, as many as the bound leaves room for.
        Returns (rows taken, whether the store is down so they are spooled, rows in the spool now)."""
        with self._transaction() as db:
            rows, size, down = db.execute("SELECT rows, bytes, store_down FROM state").fetchone()
            taken = []
            for payload in payloads:
                if size + len(payload) > self.max_bytes:
                    break
                taken.append((payload, down))
                size += len(payload)
            db.executemany("INSERT INTO spool (payload, held) VALUES (?, ?)", taken)
            db.execute("UPDATE state SET rows = rows + ?, bytes = ?", (len(taken), size))
        return len(taken), bool(down), rows + len(taken)

    @contextmanager
    def replaying(self) -> Iterator[bool]:
        """The right to replay, for one process at a time (a file lock the kernel lets go of when its
        holder dies): yields True when this caller holds it, False when another does."""
        try:
            fcntl.flock(self._replay_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(self._replay_lock, fcntl.LOCK_UN)

    def oldest(self, limit: int) -> list[tuple[int, str, bool]]:
        """The oldest rows, (id, payload, held), for the replay lock's holder."""
        rows = self._connection().execute("SELECT id, payload, held FROM spool ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(i, payload, bool(held)) for i, payload, held in rows]

    def delivered(self, entries: list[tuple[int, str, bool]]) -> None:
        """Forget rows the store has committed (the oldest ones, as ``oldest`` gave them): the store answers again."""
        with self._transaction() as db:
            db.execute("DELETE FROM spool WHERE id BETWEEN ? AND ?", (entries[0][0], entries[-1][0]))
            db.execute("UPDATE state SET rows = rows - ?, bytes = bytes - ?, store_down = 0",
                       (len(entries), sum(len(p) for _, p, _ in entries)))  # fmt: skip

    def hold(self) -> int:
        """The store failed: mark every row waiting as spooled, and those appended until the next
        delivery. Returns how many rows this marked."""
        with self._transaction() as db:
            marked = db.execute("UPDATE spool SET held = 1 WHERE held = 0").rowcount
            db.execute("UPDATE state SET store_down = 1")
        return marked

    def checkpoint(self) -> None:
        """Fold the write-ahead log back into the file (the writer thread, every period): appends
        never do it, so the answer's path never waits for a checkpoint's fsync."""
        self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def state(self) -> dict:
        rows, size, down, store = self._connection().execute("SELECT rows, bytes, store_down, store FROM state").fetchone()
        return {"rows": rows, "bytes": size, "max_bytes": self.max_bytes, "store_down": bool(down), "store": store}

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
        self._connections.clear()
        self._local = threading.local()
        self._replay_lock.close()


def read_state(path: str | Path) -> dict | None:
    """A spool's totals, read from another process (``make status``); None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    with closing(sqlite3.connect(path, timeout=5)) as connection:
        found = connection.execute("SELECT rows, bytes, store_down, store FROM state").fetchone()
    rows, size, down, store = found or (0, 0, 0, "")
    return {"rows": rows, "bytes": size, "store_down": bool(down), "store": store}
