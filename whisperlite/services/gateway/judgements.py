"""The relevance-judgement store: what the study page showed and what a person judged, in SQLite.

One file, `judgements.sqlite`, in the gateway's state folder (schema in docs/gateway.md). A comparison
is one request answered twice (personalized and non-personal); the lists are stored as shown, so the page
can be reloaded and the report knows each judged item's rank and side without trusting the browser.
Every write commits before the HTTP answer goes out (WAL, synchronous=FULL): an acknowledged judgement
survives a crash.
"""

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

FILENAME = "judgements.sqlite"
SIDES = ("personalized", "non_personal")
POSITIONS = ("left", "right")

SCHEMA = """
CREATE TABLE IF NOT EXISTS comparisons (
    comparison_id INTEGER PRIMARY KEY,
    created_at    TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    request       TEXT    NOT NULL,
    blind         INTEGER NOT NULL CHECK (blind IN (0, 1))
);
CREATE TABLE IF NOT EXISTS shown_lists (
    comparison_id INTEGER NOT NULL REFERENCES comparisons (comparison_id),
    side          TEXT    NOT NULL CHECK (side IN ('personalized', 'non_personal')),
    position      TEXT    NOT NULL CHECK (position IN ('left', 'right')),
    path          TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    request_id    TEXT    NOT NULL,
    PRIMARY KEY (comparison_id, side),
    UNIQUE (comparison_id, position)
);
CREATE TABLE IF NOT EXISTS shown_items (
    comparison_id     INTEGER NOT NULL,
    side              TEXT    NOT NULL,
    rank              INTEGER NOT NULL CHECK (rank >= 1),
    item_id           TEXT    NOT NULL,
    title             TEXT    NOT NULL,
    score             REAL    NOT NULL,
    query_match       REAL    NOT NULL,
    personal_affinity REAL    NOT NULL,
    PRIMARY KEY (comparison_id, side, rank),
    FOREIGN KEY (comparison_id, side) REFERENCES shown_lists (comparison_id, side)
);
CREATE TABLE IF NOT EXISTS judgements (
    comparison_id INTEGER NOT NULL,
    side          TEXT    NOT NULL,
    rank          INTEGER NOT NULL,
    item_id       TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    request       TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    position      TEXT    NOT NULL,
    relevant      INTEGER NOT NULL CHECK (relevant IN (0, 1)),
    judged_at     TEXT    NOT NULL,
    PRIMARY KEY (comparison_id, side, rank),
    FOREIGN KEY (comparison_id, side, rank) REFERENCES shown_items (comparison_id, side, rank)
);
"""


class UnknownComparison(LookupError):
    pass


class NotShown(LookupError):
    """A judgement for a position or rank the comparison did not show."""


@dataclass(frozen=True)
class ShownItem:
    item_id: str
    title: str
    score: float
    query_match: float
    personal_affinity: float


@dataclass(frozen=True)
class ShownList:
    side: str
    position: str
    path: str
    model_version: str
    request_id: str
    items: list[ShownItem]


@dataclass(frozen=True)
class Judgement:
    comparison_id: int
    side: str
    rank: int
    item_id: str
    user_id: str
    request: str
    model_version: str
    position: str
    relevant: bool
    judged_at: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class JudgementStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection, used from the event loop's worker threads one at a time.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    @classmethod
    def in_folder(cls, state_dir: Path) -> "JudgementStore":
        return cls(state_dir / FILENAME)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_comparison(self, user_id: str, request: str, blind: bool, lists: list[ShownList]) -> int:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            comparison_id = self._db.execute(
                "INSERT INTO comparisons (created_at, user_id, request, blind) VALUES (?, ?, ?, ?)", (_now(), user_id, request, int(blind))
            ).lastrowid
            for shown in lists:
                self._db.execute(
                    "INSERT INTO shown_lists VALUES (?, ?, ?, ?, ?, ?)",
                    (comparison_id, shown.side, shown.position, shown.path, shown.model_version, shown.request_id),
                )
                self._db.executemany(
                    "INSERT INTO shown_items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (comparison_id, shown.side, rank, item.item_id, item.title, item.score, item.query_match, item.personal_affinity)
                        for rank, item in enumerate(shown.items, 1)
                    ],
                )
        return comparison_id

    def comparison(self, comparison_id: int) -> tuple[sqlite3.Row, list[ShownList], list[Judgement]]:
        with self._lock:
            row = self._db.execute("SELECT * FROM comparisons WHERE comparison_id = ?", (comparison_id,)).fetchone()
            if row is None:
                raise UnknownComparison(f"comparison {comparison_id} does not exist")
            lists = []
            for shown in self._db.execute("SELECT * FROM shown_lists WHERE comparison_id = ? ORDER BY position", (comparison_id,)).fetchall():
                items = self._db.execute(
                    "SELECT item_id, title, score, query_match, personal_affinity FROM shown_items "
                    "WHERE comparison_id = ? AND side = ? ORDER BY rank",
                    (comparison_id, shown["side"]),
                ).fetchall()
                lists.append(
                    ShownList(shown["side"], shown["position"], shown["path"], shown["model_version"], shown["request_id"], [ShownItem(*i) for i in items])
                )
            judged = self._db.execute("SELECT * FROM judgements WHERE comparison_id = ? ORDER BY position, rank", (comparison_id,)).fetchall()
        return row, lists, [_judgement(j) for j in judged]

    def judge(self, comparison_id: int, position: str, rank: int, relevant: bool) -> Judgement:
        """Records (or changes) the judgement of the item shown at `rank` of the list at `position`."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            shown = self._db.execute(
                "SELECT c.user_id, c.request, l.side, l.model_version, i.item_id FROM comparisons c "
                "JOIN shown_lists l ON l.comparison_id = c.comparison_id AND l.position = ? "
                "LEFT JOIN shown_items i ON i.comparison_id = c.comparison_id AND i.side = l.side AND i.rank = ? "
                "WHERE c.comparison_id = ?",
                (position, rank, comparison_id),
            ).fetchone()
            if shown is None:
                if self._db.execute("SELECT 1 FROM comparisons WHERE comparison_id = ?", (comparison_id,)).fetchone() is None:
                    raise UnknownComparison(f"comparison {comparison_id} does not exist")
                raise NotShown(f"position: comparison {comparison_id} has no {position} list")
            if shown["item_id"] is None:
                raise NotShown(f"rank: the {position} list of comparison {comparison_id} has no rank {rank}")
            values = (
                comparison_id, shown["side"], rank, shown["item_id"], shown["user_id"], shown["request"],
                shown["model_version"], position, int(relevant), _now(),
            )
            self._db.execute(
                "INSERT INTO judgements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (comparison_id, side, rank) DO UPDATE SET relevant = excluded.relevant, judged_at = excluded.judged_at",
                values,
            )
        return Judgement(*values[:8], relevant, values[9])

    def all_judgements(self) -> list[Judgement]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM judgements ORDER BY comparison_id, side, rank").fetchall()
        return [_judgement(row) for row in rows]

    def judged_users(self, limit: int = 50) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT user_id FROM judgements WHERE user_id != '' GROUP BY user_id ORDER BY MAX(judged_at) DESC LIMIT ?", (limit,)
            ).fetchall()
        return [row["user_id"] for row in rows]


def _judgement(row: sqlite3.Row) -> Judgement:
    return Judgement(**{**dict(row), "relevant": bool(row["relevant"])})
