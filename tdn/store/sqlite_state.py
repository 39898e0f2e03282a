"""The embedded store's data on disk: keys, leases and recent history in one SQLite file.

Everything here is synchronous and runs on the embedded store's single worker thread, which is
what serialises writes and gives every write its own revision, as etcd does. Each method first
expires due leases, so an expired lease's keys are never returned even between expiry sweeps.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tdn.store.base import Entry, EventKind, Lease, WatchEvent
from tdn.store.errors import LeaseExpired, RevisionCompacted

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS lease (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    revision INTEGER NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (revision, key)
) WITHOUT ROWID;
"""

# Revision numbering starts where etcd's does: an empty store is at revision 1.
_INITIAL_META = {"schema": SCHEMA_VERSION, "revision": 1, "compacted": 0, "next_lease": 1}


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound).

    SQLite compares TEXT as UTF-8 bytes, whose order is code point order, so ``key >= prefix
    AND key < prefix_end(prefix)`` selects exactly the keys under ``prefix`` using the index.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1])
        if code < 0x10FFFF:
            code += 1
            if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be encoded; skip past them
                code = 0xE000
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


class SqliteState:
    """The keys, leases and bounded history of one embedded store (one SQLite file)."""

    def __init__(self, path: Path, history_limit: int) -> None:
        self._history_limit = history_limit
        # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE) below.
        self._db = sqlite3.connect(path, isolation_level=None)
        # WAL with synchronous=NORMAL: a commit survives a crash of the process (the restart
        # case this store exists for) without an fsync per write; a power cut may lose the
        # last commits but never corrupts the file.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        with self._transaction():
            for name, value in _INITIAL_META.items():
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", (name, value)
                )
        schema = self._meta("schema")
        if schema != SCHEMA_VERSION:
            self._db.close()
            raise RuntimeError(f"{path} has schema version {schema}; this TDN reads only "
                               f"{SCHEMA_VERSION}")
        # Lease deadlines are kept on the monotonic clock, so they are not persisted: on open
        # every lease gets its full TTL again, as etcd does when a new leader takes over. A
        # restart therefore never expires a lease early; its holder has one TTL to refresh.
        now = time.monotonic()
        self._deadlines: dict[int, float] = {
            int(lease_id): now + int(ttl)
            for lease_id, ttl in self._db.execute("SELECT id, ttl FROM lease")
        }
        self._events: list[WatchEvent] = []

    # --- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def _set_meta(self, name: str, value: int) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE name = ?", (value, name))

    def _next_revision(self) -> int:
        revision = self._meta("revision") + 1
        self._set_meta("revision", revision)
        return revision

    def _record(self, events: list[WatchEvent]) -> None:
        self._db.executemany(
            "INSERT INTO history (revision, key, kind, value) VALUES (?, ?, ?, ?)",
            [(e.revision, e.key, e.kind.value, e.value) for e in events],
        )
        self._compact_history()

    def _compact_history(self) -> None:
        revision = self._meta("revision")
        compacted = self._meta("compacted")
        # Compact in batches of a tenth of the limit so a write rarely pays for it.
        if revision - compacted > self._history_limit + max(self._history_limit // 10, 1):
            keep_from = revision - self._history_limit
            self._db.execute("DELETE FROM history WHERE revision < ?", (keep_from,))
            self._set_meta("compacted", keep_from - 1)

    def take_events(self) -> list[WatchEvent]:
        """The events committed since the last call, in revision order, for the watchers."""
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        self._db.close()

    # --- leases ---------------------------------------------------------------------------------

    def expire_due(self) -> None:
        """Delete every lease whose deadline has passed, and its keys, each at one revision."""
        now = time.monotonic()
        for lease_id in [i for i, deadline in self._deadlines.items() if deadline <= now]:
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        self._deadlines.pop(lease_id, None)
        with self._transaction():
            self._db.execute("DELETE FROM lease WHERE id = ?", (lease_id,))
            keys = [
                str(row[0])
                for row in self._db.execute(
                    "SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease_id,)
                )
            ]
            if not keys:
                return
            revision = self._next_revision()
            self._db.execute("DELETE FROM kv WHERE lease = ?", (lease_id,))
            events = [WatchEvent(EventKind.DELETE, key, b"", revision) for key in keys]
            self._record(events)
        self._events.extend(events)

    def grant(self, ttl: int) -> Lease:
        self.expire_due()
        with self._transaction():
            lease_id = self._meta("next_lease")
            self._set_meta("next_lease", lease_id + 1)
            self._db.execute("INSERT INTO lease (id, ttl) VALUES (?, ?)", (lease_id, ttl))
        self._deadlines[lease_id] = time.monotonic() + ttl
        return Lease(lease_id, ttl)

    def refresh(self, lease: Lease) -> None:
        self.expire_due()
        if lease.id not in self._deadlines:
            raise LeaseExpired(lease.id)
        ttl = self._db.execute("SELECT ttl FROM lease WHERE id = ?", (lease.id,)).fetchone()[0]
        self._deadlines[lease.id] = time.monotonic() + int(ttl)

    def revoke(self, lease: Lease) -> None:
        self.expire_due()
        if lease.id in self._deadlines:
            self._drop_lease(lease.id)

    # --- keys -----------------------------------------------------------------------------------

    @staticmethod
    def _entry(row: tuple[str, bytes, int, int, int, int]) -> Entry:
        key, value, create_revision, mod_revision, version, lease = row
        return Entry(key, bytes(value), mod_revision, create_revision, version, lease)

    _COLUMNS = "key, value, create_revision, mod_revision, version, lease"

    def get(self, key: str) -> Entry | None:
        self.expire_due()
        row = self._db.execute(f"SELECT {self._COLUMNS} FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._entry(row)

    def list_prefix(self, prefix: str) -> tuple[list[Entry], int]:
        self.expire_due()
        # One read transaction, so the revision matches the rows.
        self._db.execute("BEGIN")
        try:
            end = prefix_end(prefix)
            if end is None:
                rows = self._db.execute(
                    f"SELECT {self._COLUMNS} FROM kv WHERE key >= ? ORDER BY key", (prefix,)
                ).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {self._COLUMNS} FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                    (prefix, end),
                ).fetchall()
            revision = self._meta("revision")
        finally:
            self._db.execute("COMMIT")
        return [self._entry(row) for row in rows], revision

    def put(self, key: str, value: bytes, lease_id: int, expected_revision: int | None) -> int:
        """Write and return the new revision; 0 when ``expected_revision`` did not match."""
        self.expire_due()
        if lease_id and lease_id not in self._deadlines:
            raise LeaseExpired(lease_id)
        with self._transaction():
            row = self._db.execute(
                "SELECT create_revision, mod_revision, version FROM kv WHERE key = ?", (key,)
            ).fetchone()
            current = 0 if row is None else int(row[1])
            if expected_revision is not None and current != expected_revision:
                return 0
            revision = self._next_revision()
            create_revision, version = (revision, 1) if row is None else (row[0], row[2] + 1)
            self._db.execute(
                "INSERT OR REPLACE INTO kv (key, value, create_revision, mod_revision, version,"
                " lease) VALUES (?, ?, ?, ?, ?, ?)",
                (key, value, create_revision, revision, version, lease_id),
            )
            event = WatchEvent(EventKind.PUT, key, value, revision)
            self._record([event])
        self._events.append(event)
        return revision

    def delete(self, key: str) -> bool:
        self.expire_due()
        with self._transaction():
            if self._db.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount == 0:
                return False
            event = WatchEvent(EventKind.DELETE, key, b"", self._next_revision())
            self._record([event])
        self._events.append(event)
        return True

    # --- history --------------------------------------------------------------------------------

    def revision(self) -> int:
        return self._meta("revision")

    def history_since(self, prefix: str, start_revision: int) -> list[WatchEvent]:
        """Recorded events under ``prefix`` from ``start_revision`` on (no expiry sweep here:
        the watch this replays for is attached right after, and must see later events once)."""
        compacted = self._meta("compacted")
        if start_revision <= compacted:
            raise RevisionCompacted(start_revision, compacted + 1)
        end = prefix_end(prefix)
        query = "SELECT revision, key, kind, value FROM history WHERE revision >= ? AND key >= ?"
        params: tuple[object, ...] = (start_revision, prefix)
        if end is not None:
            query += " AND key < ?"
            params = (*params, end)
        rows = self._db.execute(query + " ORDER BY revision, key", params).fetchall()
        return [
            WatchEvent(EventKind(kind), key, bytes(value), revision)
            for revision, key, kind, value in rows
        ]
