"""The results index of a sweep: one SQLite file plus a ``results.csv`` export.

A sweep directory holds one run directory per student run (the ``train`` command's
format: ``config.json``, ``metrics.jsonl``, ``final.json``). The index gathers them so
they can be queried without walking the tree:

- ``runs``: one row per run — its axes (strategy, teacher accuracy and augmentation,
  student augmentation, subset, steps, eval interval, seed), ``status``
  (``planned`` / ``running`` / ``done`` / ``failed``), the error of a failed run, and the
  final accuracy of the classifier h (and of the soft head g), and its diagnostics once
  measured (``target_entropy``, ``agreement`` with ``agreement_teacher``; empty in indexes
  and CSVs written before them, which read as they are);
- ``evals``: one row per evaluation of a run (``step``, ``images_seen``, ``test_acc_h``,
  ``test_acc_g``, ``loss``, ``img_per_s``, ``wall_s``);
- ``units``: one row per unit of work (dataset conversion, teacher ladder, cache, run):
  its ``kind``, ``status``, ``attempts`` made by the last invocation and the error of the last
  failed one — where a failed ladder or cache is recorded;
- ``meta``: key/value pairs (the sweep configuration as JSON, the step budgets).

Paths (``run_dir``) are relative to the sweep directory: workers on other machines may see it
mounted elsewhere.

Accuracies are stored as fractions in ``[0, 1]``; ``metrics.jsonl`` written in percent is
converted on the way in, so queries never have to guess the unit.

Example:
    >>> import tempfile, pathlib
    >>> from fasttarget.results import ResultsIndex, RunRow
    >>> db = ResultsIndex(pathlib.Path(tempfile.mkdtemp()) / "results.sqlite")
    >>> db.upsert_run(RunRow(run_id="A_none_stdaug_full_steps10_ev5_seed0", strategy="A",
    ...     student_aug="stdaug", steps=10, eval_every=5, seed=0, status="done", final_acc=0.25))
    >>> [r.final_acc for r in db.runs(strategy="A")]
    [0.25]
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from dataclasses import Field, asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from fasttarget.errors import UserError

INDEX_FILE = "results.sqlite"
CSV_FILE = "results.csv"
META_FILE = "meta.json"  # the index's meta table, exported next to results.csv so a report can be redone from both
STATUSES = ("planned", "running", "done", "failed")


@dataclass(frozen=True)
class RunAxes:
    """The axes of one student run: what it trains, never how it went.

    The single definition behind :class:`fasttarget.sweep.RunSpec` (a planned run) and
    :class:`RunRow` (its row in the index), so the plan and the index cannot drift apart.
    ``teacher_acc`` and ``teacher_aug`` are ``None`` for Strategy A; ``ipc`` and
    ``fraction`` are ``None`` on the full training split.
    """

    strategy: str
    student_aug: str
    steps: int
    eval_every: int
    seed: int
    teacher_acc: float | None = None
    teacher_aug: str | None = None
    ipc: int | None = None
    fraction: float | None = None


# kw_only: ``run_id`` has no default but follows the inherited axes, which have some.
@dataclass(frozen=True, kw_only=True)
class RunRow(RunAxes):
    """One run of the index: its axes, status and final accuracy.

    ``teacher_acc`` is the ladder's preset accuracy (``None`` for Strategy A);
    ``teacher_acc_measured`` the accuracy the saved teacher really had. ``ipc`` and
    ``fraction`` are ``None`` on the full training split. The diagnostics
    (:mod:`fasttarget.diagnostics`) are ``None`` until measured, and in indexes written
    before them: ``target_entropy`` (nats), ``agreement`` (top-1 agreement of the student's
    ``h`` with ``agreement_teacher``, e.g. ``noaug-t60``, on a test subset).
    """

    run_id: str
    status: str = "planned"
    error: str | None = None
    final_step: int | None = None
    final_acc: float | None = None
    final_acc_g: float | None = None
    teacher_acc_measured: float | None = None
    wall_s: float | None = None
    run_dir: str | None = None
    target_entropy: float | None = None
    agreement: float | None = None
    agreement_teacher: str | None = None
    updated_at: str | None = None

    @property
    def subset(self) -> str:
        """The training subset in words: ``full``, ``ipc50`` or ``frac0.1``."""
        return subset_label(self.ipc, self.fraction)

    @property
    def subset_size(self) -> float:
        """A sortable size of the subset (IPC, fraction × 10⁶, full = infinity)."""
        if self.ipc is not None:
            return float(self.ipc)
        if self.fraction is not None:
            return self.fraction * 1e6
        return math.inf


@dataclass(frozen=True)
class EvalRow:
    """One evaluation of one run (a line of ``metrics.jsonl``)."""

    run_id: str
    step: int
    test_acc_h: float
    images_seen: int | None = None
    test_acc_g: float | None = None
    loss: float | None = None
    img_per_s: float | None = None
    wall_s: float | None = None


@dataclass(frozen=True)
class UnitRow:
    """One unit of work of a sweep (``data:convert``, ``ladder:<aug>``, ``cache:…``, ``run:<run_id>``)."""

    key: str
    kind: str
    status: str
    attempts: int = 0
    error: str | None = None
    wall_s: float | None = None
    updated_at: str | None = None


def subset_label(ipc: int | None, fraction: float | None) -> str:
    """``full``, ``ipc<N>`` or ``frac<F>``: the subset part of a run id and of table captions."""
    if ipc is not None:
        return f"ipc{ipc}"
    if fraction is not None:
        return f"frac{fraction:g}"
    return "full"


def _fields(cls: type) -> list[Field]:
    """The fields of a row class in column order: ``run_id`` first, the rest as declared.

    :class:`RunRow` inherits its axes, so they come before its own ``run_id`` among its
    fields; the tables and the CSV keep the id as their first column all the same.
    """
    return sorted(fields(cls), key=lambda f: f.name != "run_id")


def _columns(cls: type) -> list[str]:
    return [f.name for f in _fields(cls)]


def _sql_type(annotation: str) -> str:
    for py, sql in (("int", "INTEGER"), ("float", "REAL")):
        if annotation.startswith(py):
            return sql
    return "TEXT"


def _create_sql(table: str, cls: type, key: str) -> str:
    cols = ", ".join(f"{f.name} {_sql_type(str(f.type))}" for f in _fields(cls))
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({key}))"


def _as_fraction(value: Any) -> float | None:
    """Accuracy as a fraction: values above 1 are taken as percent."""
    if value is None:
        return None
    value = float(value)
    return value / 100.0 if value > 1.0 else value


class ResultsIndex:
    """The SQLite index of one sweep directory.

    Only the sweep's main process writes; readers (the report) may open it at any time.

    Args:
        path: the ``results.sqlite`` file (created with its tables when missing).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        for table, cls, key in (("runs", RunRow, "run_id"), ("evals", EvalRow, "run_id, step"),
                                ("units", UnitRow, "key")):
            self._db.execute(_create_sql(table, cls, key))
            self._add_missing_columns(table, cls)
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._db.commit()

    def _add_missing_columns(self, table: str, cls: type) -> None:
        """Columns added since an existing index was written (left NULL in its old rows)."""
        have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
        for f in _fields(cls):
            if f.name not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {f.name} {_sql_type(str(f.type))}")

    @classmethod
    def open_existing(cls, directory: Path) -> ResultsIndex:
        """Open the index of a sweep directory, or explain how to make one."""
        path = Path(directory) / INDEX_FILE
        if not path.is_file():
            raise UserError(
                f"no results index {path}: run `fasttarget sweep CONFIG --out {directory}` first"
            )
        return cls(path)

    def close(self) -> None:
        self._db.close()

    # -- writing ---------------------------------------------------------------------

    def upsert_run(self, row: RunRow) -> None:
        """Insert or replace one run row (stamping ``updated_at``)."""
        if row.status not in STATUSES:
            raise ValueError(f"unknown status {row.status!r}")
        values = asdict(row)
        values["updated_at"] = _now()
        cols = list(values)
        self._db.execute(
            f"INSERT OR REPLACE INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [values[c] for c in cols],
        )
        self._db.commit()

    def upsert_unit(self, row: UnitRow) -> None:
        """Insert or replace one unit row (stamping ``updated_at``)."""
        if row.status not in STATUSES:
            raise ValueError(f"unknown status {row.status!r}")
        values = {**asdict(row), "updated_at": _now()}
        self._db.execute(f"INSERT OR REPLACE INTO units ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                         list(values.values()))
        self._db.commit()

    def replace_evals(self, run_id: str, evals: Iterable[EvalRow]) -> None:
        """Replace every evaluation row of ``run_id`` with ``evals``."""
        cols = _columns(EvalRow)
        self._db.execute("DELETE FROM evals WHERE run_id = ?", (run_id,))
        self._db.executemany(
            f"INSERT INTO evals ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [[getattr(e, c) for c in cols] for e in evals],
        )
        self._db.commit()

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key``."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        self._db.commit()

    # -- reading ---------------------------------------------------------------------

    def meta(self, key: str, default: Any = None) -> Any:
        cur = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,))
        found = cur.fetchone()
        return default if found is None else json.loads(found[0])

    def all_meta(self) -> dict[str, Any]:
        """Every meta key with its value."""
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta ORDER BY key")}

    def runs(self, **where: Any) -> list[RunRow]:
        """Runs whose columns equal the given values (``None`` matches SQL NULL)."""
        clauses, params = [], []
        for col, value in where.items():
            if col not in _columns(RunRow):
                raise ValueError(f"unknown column {col!r}")
            if value is None:
                clauses.append(f"{col} IS NULL")
            else:
                clauses.append(f"{col} = ?")
                params.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        cur = self._db.execute(sql + " ORDER BY run_id", params)
        names = [d[0] for d in cur.description]
        return [RunRow(**dict(zip(names, r))) for r in cur.fetchall()]

    def evals(self, run_id: str) -> list[EvalRow]:
        """The evaluations of one run, by step."""
        cur = self._db.execute("SELECT * FROM evals WHERE run_id = ? ORDER BY step", (run_id,))
        names = [d[0] for d in cur.description]
        return [EvalRow(**dict(zip(names, r))) for r in cur.fetchall()]

    def all_evals(self) -> dict[str, list[EvalRow]]:
        """Every run's evaluations, keyed by run id."""
        cur = self._db.execute("SELECT * FROM evals ORDER BY run_id, step")
        names = [d[0] for d in cur.description]
        out: dict[str, list[EvalRow]] = {}
        for r in cur.fetchall():
            row = EvalRow(**dict(zip(names, r)))
            out.setdefault(row.run_id, []).append(row)
        return out

    def units(self, **where: Any) -> list[UnitRow]:
        """Units whose columns equal the given values, by key."""
        unknown = set(where) - set(_columns(UnitRow))
        if unknown:
            raise ValueError(f"unknown column(s) {sorted(unknown)}")
        sql = "SELECT * FROM units" + (" WHERE " + " AND ".join(f"{c} = ?" for c in where) if where else "")
        cur = self._db.execute(sql + " ORDER BY key", list(where.values()))
        names = [d[0] for d in cur.description]
        return [UnitRow(**dict(zip(names, r))) for r in cur.fetchall()]

    def status_counts(self) -> dict[str, int]:
        cur = self._db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status")
        return dict(cur.fetchall())

    def write_csv(self, path: Path) -> None:
        """Export one line per run: its columns plus space-separated ``eval_steps`` /
        ``eval_acc`` / ``eval_images`` (images seen by each evaluation), and ``meta.json``
        (the meta table) beside it: together they are everything a report reads
        (:func:`read_csv`)."""
        evals = self.all_evals()
        cols = _columns(RunRow)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(cols + list(EVAL_COLUMNS))
            for run in self.runs():
                ev = evals.get(run.run_id, [])
                writer.writerow(
                    [getattr(run, c) for c in cols]
                    + [" ".join(str(e.step) for e in ev), " ".join(repr(e.test_acc_h) for e in ev),
                       " ".join(str(e.images_seen or "") for e in ev) if all(e.images_seen for e in ev) else ""]
                )
        (Path(path).parent / META_FILE).write_text(json.dumps(self.all_meta(), indent=1) + "\n")


EVAL_COLUMNS = ("eval_steps", "eval_acc", "eval_images")


def _parse(annotation: str, text: str) -> Any:
    if text == "":
        return None
    kind = _sql_type(annotation)
    return int(text) if kind == "INTEGER" else float(text) if kind == "REAL" else text


def read_csv(path: Path) -> tuple[list[RunRow], dict[str, list[EvalRow]]]:
    """Runs and evaluations back from a ``results.csv`` (:meth:`ResultsIndex.write_csv`);
    files written before a column existed (``eval_images``, the diagnostics) read without it.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> db = ResultsIndex(d / "results.sqlite")
        >>> db.upsert_run(RunRow(run_id="r", strategy="A", student_aug="stdaug", steps=10, eval_every=5,
        ...                      seed=0, status="done", final_acc=0.25))
        >>> db.replace_evals("r", [EvalRow("r", 5, 0.2, images_seen=640), EvalRow("r", 10, 0.25, images_seen=1280)])
        >>> db.write_csv(d / "results.csv")
        >>> runs, evals = read_csv(d / "results.csv")
        >>> runs[0].final_acc, [(e.step, e.test_acc_h, e.images_seen) for e in evals["r"]]
        (0.25, [(5, 0.2, 640), (10, 0.25, 1280)])
    """
    types = {f.name: str(f.type) for f in fields(RunRow)}
    runs, evals = [], {}
    with open(path, newline="") as fh:
        for line in csv.DictReader(fh):
            run = RunRow(**{k: _parse(t, line.get(k, "")) for k, t in types.items()})
            runs.append(run)
            steps, accs = line.get("eval_steps", "").split(), line.get("eval_acc", "").split()
            images = line.get("eval_images", "").split() or [None] * len(steps)
            evals[run.run_id] = [EvalRow(run.run_id, int(s), float(a), images_seen=None if i is None else int(i))
                                 for s, a, i in zip(steps, accs, images)]
    return runs, evals


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_run_dir(run_dir: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``final.json`` (or ``None`` while unfinished) and the lines of ``metrics.jsonl``.

    A truncated last line (a run killed while writing) is ignored.
    """
    run_dir = Path(run_dir)
    final = None
    final_path = run_dir / "final.json"
    if final_path.is_file():
        try:
            final = json.loads(final_path.read_text())
        except json.JSONDecodeError:
            final = None
    metrics: list[dict[str, Any]] = []
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            try:
                metrics.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return final, metrics


def eval_rows(run_id: str, metrics: list[dict[str, Any]]) -> list[EvalRow]:
    """Convert ``metrics.jsonl`` objects to :class:`EvalRow` (accuracies as fractions)."""
    rows = {}
    for m in metrics:
        if "step" not in m or m.get("test_acc_h") is None:
            continue
        rows[int(m["step"])] = EvalRow(
            run_id=run_id,
            step=int(m["step"]),
            test_acc_h=_as_fraction(m["test_acc_h"]),
            images_seen=m.get("images_seen"),
            test_acc_g=_as_fraction(m.get("test_acc_g")),
            loss=m.get("loss"),
            img_per_s=m.get("img_per_s"),
            wall_s=m.get("wall_s"),
        )
    return [rows[s] for s in sorted(rows)]


def finished(final: dict[str, Any] | None) -> bool:
    """Whether a ``final.json`` says the run completed."""
    return final is not None and final.get("status") == "done"


def final_accuracies(final: dict[str, Any]) -> tuple[float | None, float | None]:
    """(h, g) test accuracy of a finished run, as fractions."""
    return _as_fraction(final.get("test_acc_h")), _as_fraction(final.get("test_acc_g"))
