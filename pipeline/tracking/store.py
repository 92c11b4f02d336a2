"""Where a workflow's runs are tracked, decided before planning and without importing MLflow (its import costs the
Snakefile seconds): the recipe's `tracking.uri`, else MLflow's own MLFLOW_TRACKING_URI, else MLflow's default, a
SQLite file `mlflow.db` in the directory Snakemake runs in, where a plain `mlflow ui` finds it. `none` turns tracking
off. Also the tracking rule's mark of what it did: a logging that failed says so in the mark, and the next run plans
the rule again, so a failed logging is never taken for a done one; and whether an existing SQLite file is a store.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

OFF = "none"
ENVIRONMENT_VARIABLE = "MLFLOW_TRACKING_URI"
DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow 3's own default (mlflow.store.tracking.DEFAULT_TRACKING_URI)
# The stores MLflow's tracking client takes by scheme; a bare path is a local file store, as in MLflow.
SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")
MARK = "tracking/run.json"  # the tracking rule's output under out_dir
# MLflow 3 refuses a file store (it is "in maintenance mode") unless this variable is true.
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
# Tables every MLflow SQLite store has, whichever its schema version.
MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}


def store_uri(recipe_uri: str | None, environ=os.environ) -> str | None:
    """The tracking URI a run logs to, in MLflow's order of precedence after the recipe's own key; None when off."""
    uri = recipe_uri or environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_URI
    return None if uri.strip().lower() == OFF else uri


def experiment_name(config: dict) -> str:
    """The recipe's `tracking.experiment`, else the name of its out_dir (outputs/demo -> demo)."""
    return config["tracking"]["experiment"] or os.path.basename(os.path.abspath(config["out_dir"]))


def uri_problem(uri: str, environ=os.environ) -> str | None:
    """What is wrong with a tracking URI, in words; None for one MLflow can log to."""
    parts = urlsplit(uri)
    scheme = "databricks" if uri.lower() == "databricks" else parts.scheme.lower()  # MLflow's own shorthand
    bare_path = not scheme or (len(scheme) == 1 and uri[1:3] in (":\\", ":/"))  # a relative path, a Windows drive
    if scheme not in SCHEMES and not bare_path:
        return (f"{uri!r} has the unknown scheme {parts.scheme!r}; use sqlite:///path/to/mlflow.db, "
                f"http(s)://host:port, a database URL ({', '.join(SCHEMES[4:7])}), or {OFF!r}")
    if scheme == "sqlite" and in_memory(parts.path, parts.query):
        return f"{uri!r} is an in-memory database, which would lose every run; write sqlite:///mlflow.db"
    if scheme in ("http", "https") and not parts.hostname:
        return f"{uri!r} names no host; write {scheme}://host:port"
    if (bare_path or scheme == "file") and environ.get(ALLOW_FILE_STORE, "").strip().lower() not in ("true", "1"):
        return (f"{uri!r} is a file store, which MLflow 3 refuses (every run's logging would fail); write "
                f"sqlite:///mlflow.db, or set {ALLOW_FILE_STORE}=true to keep using it")
    return None


def in_memory(path: str, query: str) -> bool:
    """Whether a sqlite URI's path and query open a database that lives in memory: sqlite://, sqlite:///:memory:, or
    SQLite's own URI forms (sqlite:///file::memory:?cache=shared, ...?mode=memory)."""
    database = path[1:].removeprefix("file:")  # sqlite:///x.db -> x.db, sqlite:////abs/x.db -> /abs/x.db
    return database in ("", ":memory:") or "memory" in parse_qs(query).get("mode", [])


def tracking_problems(config: dict, environ=os.environ) -> list[str]:
    """The recipe's `tracking` keys, and the environment's MLFLOW_TRACKING_URI when the recipe leaves the URI to it."""
    tracking, problems = config["tracking"], []
    if tracking["uri"]:
        where, uri = "tracking.uri", tracking["uri"]
    else:
        where, uri = f"the environment variable {ENVIRONMENT_VARIABLE}", environ.get(ENVIRONMENT_VARIABLE)
    if uri is not None and uri.strip().lower() != OFF and (problem := uri_problem(uri.strip(), environ)):
        problems.append(f"{where}: {problem}")
    if tracking["experiment"] is not None and not tracking["experiment"].strip():
        problems.append("tracking.experiment: must not be blank; leave it out to name the experiment after out_dir")
    return problems


def failed_attempt(mark: str | Path) -> bool:
    """Whether the tracking rule's mark records a logging that failed."""
    try:
        return json.loads(Path(mark).read_text()).get("status") == "failed"
    except (OSError, ValueError, AttributeError):
        return False


def forget_failed_attempt(mark: str | Path) -> None:
    """Remove a failed logging's mark, so that Snakemake plans the tracking rule again (its output is missing)."""
    if failed_attempt(mark):
        Path(mark).unlink(missing_ok=True)


def sqlite_store_problem(path: Path) -> str | None:
    """What keeps an existing file from being read as an MLflow SQLite store; None for a store. Checked without
    MLflow, which would write its tables into whatever database it is given (an empty file, another program's), or
    fail with a traceback of its own (a text file), or retry for minutes (a folder)."""
    if path.is_dir():
        return "is a folder, not a SQLite database file"
    try:  # read-only: looking never changes the file
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as database:
            tables = {name for (name,) in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:  # not a database, unreadable, locked
        return f"cannot be read as a SQLite database ({error})"
    if not MLFLOW_TABLES <= tables:
        what = "is an empty file" if not tables and path.stat().st_size == 0 else "is a SQLite database"
        return f"{what} without MLflow's tables: not a tracking store (the workflow's track rule makes one)"
    return None
