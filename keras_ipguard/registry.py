"""The owner's user registry: an SQLite database of licensed users, an audit log and the gateway's served marks.

Every change is one transaction (`BEGIN IMMEDIATE`), so several processes can
add or revoke users at once without duplicate ids or a corrupt file.
"""

import contextlib
import dataclasses
import datetime
import sqlite3
import time
import unicodedata

from .errors import RegistryError, VaultError

SCHEMA_VERSION = 1
MAX_NAME_LENGTH = 128
# Seconds a writer waits for another process's transaction before giving up.
LOCK_TIMEOUT_SECONDS = 60

_SCHEMA = """
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    key_index INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    revoked_at INTEGER,
    image_file TEXT,
    image_sha256 TEXT
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    user_id INTEGER,
    user_name TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    detail TEXT
);
CREATE INDEX audit_user ON audit (user_id);
"""
# Answers the gateway marked (`served_marks`), made on the first mark: a registry without it has none, and older
# keras-ipguard versions read a registry with it as before.
_MARKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS served_marks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user_id INTEGER,
    user_name TEXT,
    fingerprint TEXT NOT NULL,
    model_class INTEGER NOT NULL,
    served_class INTEGER NOT NULL,
    pixels BLOB NOT NULL,
    UNIQUE (fingerprint, user_id)
)
"""


def iso_time(seconds):
    """Unix seconds as an ISO-8601 UTC string (None stays None)."""
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class User:
    """One licensed user as the registry holds them."""

    id: int
    name: str
    key_index: int
    issued_at: int
    revoked_at: int | None
    image_file: str | None
    image_sha256: str | None

    @property
    def active(self):
        return self.revoked_at is None

    def to_dict(self):
        record = dataclasses.asdict(self)
        record.update(active=self.active, issued=iso_time(self.issued_at), revoked=iso_time(self.revoked_at))
        return record


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One row of the audit log."""

    id: int
    at: float
    event: str
    user_id: int | None
    user_name: str | None
    outcome: str
    reason: str | None
    detail: str | None

    def to_dict(self):
        return dataclasses.asdict(self)


def check_name(name):
    """Validates a user name: 1..128 printable characters, not only spaces."""
    if not isinstance(name, str) or not name.strip():
        raise RegistryError("user name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError(f"user name must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise RegistryError(f"user name {name!r} contains control characters")
    return name


class UserRegistry:
    """Users and audit log in an SQLite file.

    Args:
        path: the database file (`VAULT/users.db`).
    """

    def __init__(self, path):
        self.path = path

    def _connect(self):
        try:
            connection = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_SECONDS, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA synchronous=FULL")
            return connection
        except sqlite3.Error as error:
            raise VaultError(
                f"user registry {self.path} is corrupt or unreadable ({error}); restore it from a backup"
            ) from None

    @contextlib.contextmanager
    def _transaction(self, write=True):
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()

    def create(self):
        """Creates the tables in a new, empty database file."""
        connection = self._connect()
        try:
            connection.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        finally:
            connection.close()

    def check(self):
        """Raises VaultError unless the file is an intact registry of this schema version."""
        try:
            with self._transaction(write=False) as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                integrity = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise VaultError(f"user registry {self.path} is corrupt ({error}); restore it from a backup") from None
        if version != SCHEMA_VERSION:
            raise VaultError(
                f"user registry {self.path} has schema version {version}, this keras-ipguard reads "
                f"{SCHEMA_VERSION}; upgrade keras-ipguard"
            )
        if integrity != "ok":
            raise VaultError(f"user registry {self.path} failed its integrity check ({integrity})")

    def add(self, name, keys, issue):
        """Adds a user in one transaction and issues their identity image.

        Args:
            name: the new user's name (unique, case-insensitive).
            keys: the indices of the key images identities may be made from; users get them round-robin.
            issue: callable(user_id, key_index, issued_at) -> (image_file, sha256)
                that writes the identity image; if it raises, nothing is added.

        Returns:
            The new `User`.
        """
        check_name(name)
        with self._transaction() as db:
            existing = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
            if existing is not None:
                raise RegistryError(_exists_message(_user(existing)))
            issued_at = int(time.time())
            user_id = db.execute(
                "INSERT INTO users (name, key_index, issued_at) VALUES (?, 0, ?)", (name, issued_at)
            ).lastrowid
            key_index = int(keys[(user_id - 1) % len(keys)])
            image_file, sha256 = issue(user_id, key_index, issued_at)
            db.execute(
                "UPDATE users SET key_index = ?, image_file = ?, image_sha256 = ? WHERE id = ?",
                (key_index, image_file, sha256, user_id),
            )
            _log(db, "add", user_id, name, "ok", None, image_file)
            return _user(db.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone())

    def revoke(self, name):
        """Revokes a user's licence (the row stays); returns (user, newly_revoked)."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise RegistryError(f"no user named {name!r}; `ipguard users list` shows the registry")
            user = _user(row)
            if not user.active:
                return user, False
            db.execute("UPDATE users SET revoked_at = ? WHERE id = ?", (int(time.time()), user.id))
            _log(db, "revoke", user.id, user.name, "ok", None, None)
            return _user(db.execute("SELECT * FROM users WHERE id = ?", (user.id,)).fetchone()), True

    def users(self):
        """All users, active and revoked, by id."""
        with self._transaction(write=False) as db:
            return [_user(row) for row in db.execute("SELECT * FROM users ORDER BY id")]

    def get(self, name):
        """The user called `name`, or None."""
        with self._transaction(write=False) as db:
            row = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
            return None if row is None else _user(row)

    def by_ids(self, user_ids):
        """Maps each known id in `user_ids` to its `User` (one query for the whole batch)."""
        ids = sorted({int(i) for i in user_ids})
        found = {}
        with self._transaction(write=False) as db:
            for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                chunk = ids[start : start + 500]
                query = f"SELECT * FROM users WHERE id IN ({','.join('?' * len(chunk))})"
                found.update((row["id"], _user(row)) for row in db.execute(query, chunk))
        return found

    def log_many(self, events, marks=()):
        """Appends (event, user_id, user_name, outcome, reason, detail) rows, and the gateway's marked answers
        (at, user_id, user_name, fingerprint, model_class, served_class, pixels; an image a user asked about again
        is kept once), in one transaction."""
        with self._transaction() as db:
            for event in events:
                _log(db, *event)
            if marks:
                db.execute(_MARKS_SCHEMA)
                db.executemany("INSERT OR IGNORE INTO served_marks (at, user_id, user_name, fingerprint, model_class, "
                               "served_class, pixels) VALUES (?, ?, ?, ?, ?, ?, ?)", marks)

    def served_marks(self):
        """The gateway's marked answers, oldest first (rows as dicts; none where it never marked one)."""
        with self._transaction(write=False) as db:
            if not _has_marks(db):
                return []
            return [dict(row) for row in db.execute("SELECT * FROM served_marks ORDER BY id")]

    def usage(self):
        """Per user id: gateway predictions served (`requests`, `images`), refused, licences, last seen, and the
        answers the gateway marked (`marked`)."""
        with self._transaction(write=False) as db:
            marked = {}
            if _has_marks(db):
                marked = dict(db.execute("SELECT user_id, COUNT(*) FROM served_marks GROUP BY user_id").fetchall())
            rows = db.execute(
                "SELECT user_id, SUM(event = 'predict' AND outcome = 'ok') AS requests, "
                "SUM(CASE WHEN event = 'predict' AND outcome = 'ok' THEN CAST(detail AS INTEGER) ELSE 0 END) "
                "AS images, SUM(event = 'predict' AND outcome != 'ok') AS refused, "
                "SUM(event = 'licence' AND outcome = 'ok') AS licences, MAX(at) AS last_seen "
                "FROM audit WHERE event IN ('predict', 'licence') AND user_id IS NOT NULL GROUP BY user_id"
            )
            return {row["user_id"]: {**dict(row), "marked": marked.get(row["user_id"], 0)} for row in rows}

    def audit(self, limit=None):
        """Audit events, oldest first (the last `limit` when given)."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT * FROM (SELECT * FROM audit ORDER BY id DESC LIMIT ?) ORDER BY id",
                (-1 if limit is None else int(limit),),
            )
            return [AuditEvent(**dict(row)) for row in rows]


def _user(row):
    return User(**dict(row))


def _has_marks(db):
    """Whether the gateway ever marked an answer (the table is made on the first mark)."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'served_marks'").fetchone() \
        is not None


def _exists_message(user):
    if user.active:
        return f"user {user.name!r} already exists (id {user.id}); their identity image is {user.image_file}"
    return (
        f"user {user.name!r} (id {user.id}) was revoked on {iso_time(user.revoked_at)}; "
        "a revoked name cannot be reused, choose another name"
    )


def _log(db, event, user_id, user_name, outcome, reason, detail):
    db.execute(
        "INSERT INTO audit (at, event, user_id, user_name, outcome, reason, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (time.time(), event, user_id, user_name, outcome, reason, detail),
    )
