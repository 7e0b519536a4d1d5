"""The results store: every complete measurement appended to SQLite (stdlib ``sqlite3``, WAL) under
the user's cache dir, ``$EDGEKIT_HOME`` or ``$XDG_CACHE_HOME/edgekit`` or ``~/.cache/edgekit``.
A run that failed, or was cut short, writes nothing.

>>> # rows = ResultStore().query(model="ghostnet_0_5", device="local")  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Mapping

__all__ = ["cache_dir", "ResultStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    device TEXT NOT NULL,
    format TEXT NOT NULL,
    precision TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    artifact_path TEXT NOT NULL,
    median_ms REAL,
    p90_ms REAL,
    cv REAL NOT NULL,
    stats TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    settings TEXT NOT NULL,
    conditions TEXT NOT NULL,
    parity TEXT,
    latencies_ns TEXT NOT NULL,
    input_shape TEXT
);
CREATE INDEX IF NOT EXISTS results_lookup ON results (model, device, format, precision);
"""
_FILTERS = ("model", "device", "format", "precision", "input_shape")


def cache_dir() -> Path:
    if os.environ.get("EDGEKIT_HOME"):
        return Path(os.environ["EDGEKIT_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgekit"


class ResultStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / "results.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(results)")}
            if "input_shape" not in columns:  # a store written before inputs had shapes of their own
                db.execute("ALTER TABLE results ADD COLUMN input_shape TEXT")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.row_factory = sqlite3.Row
        return db

    def record(self, result: Any, *, artifact_path: str, parity: Mapping[str, Any] | None = None) -> int:
        """Append one complete ``RunResult`` (with its parity, if measured); returns its row id."""
        s = result.stats
        row = (time.time(), result.model, result.device, result.format, result.precision, result.artifact_sha256,
               artifact_path, s.median_ms, s.p90_ms, s.cv, json.dumps(s.to_dict()), json.dumps(dict(result.fingerprint)),
               json.dumps(dict(result.settings)), json.dumps(dict(result.conditions)),
               None if parity is None else json.dumps(parity), json.dumps(list(result.latencies_ns)),
               result.input_shape)
        db = self._connect()
        try:
            with db:  # one transaction: the row is there whole or not at all
                cur = db.execute("INSERT INTO results (created, model, device, format, precision, artifact_sha256, "
                                 "artifact_path, median_ms, p90_ms, cv, stats, fingerprint, settings, conditions, "
                                 "parity, latencies_ns, input_shape) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                                 "?, ?, ?)", row)
            return int(cur.lastrowid)
        finally:
            db.close()

    def query(self, **filters: str | None) -> list[dict[str, Any]]:
        """Rows matching every given filter (model, device, format, precision, input_shape), oldest
        first; a filter is a shell-style glob (``ghostnet*``, ``*x224x224``), case-sensitive."""
        unknown = sorted(set(filters) - set(_FILTERS))
        if unknown:
            raise ValueError(f"unknown result filter(s) {unknown}; filter by {list(_FILTERS)}")
        where = [(k, v) for k, v in filters.items() if v is not None]
        sql = "SELECT * FROM results" + (" WHERE " + " AND ".join(f"{k} GLOB ?" for k, _ in where) if where else "")
        db = self._connect()
        try:
            rows = db.execute(sql + " ORDER BY id", [v for _, v in where]).fetchall()
        finally:
            db.close()
        return [_row(r) for r in rows]

    def count(self) -> int:
        return len(self.query())


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    for key in ("stats", "fingerprint", "settings", "conditions", "parity", "latencies_ns"):
        if d[key] is not None:
            d[key] = json.loads(d[key])
    return d
