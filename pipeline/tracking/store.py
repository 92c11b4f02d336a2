"""Where a workflow's runs are tracked, decided before planning and without importing MLflow (its import costs the
Snakefile seconds): the recipe's `tracking.uri`, else MLflow's own MLFLOW_TRACKING_URI, else MLflow's default, a
SQLite file `mlflow.db` in the directory Snakemake runs in, where a plain `mlflow ui` finds it. `none` turns tracking
off. Also the tracking rule's mark of what it did: a logging that failed says so in the mark, and the next run plans
the rule again, so a failed logging is never taken for a done one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

OFF = "none"
ENVIRONMENT_VARIABLE = "MLFLOW_TRACKING_URI"
DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow 3's own default (mlflow.store.tracking.DEFAULT_TRACKING_URI)
# The stores MLflow's tracking client takes by scheme; a bare path is a local file store, as in MLflow.
SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")
MARK = "tracking/run.json"  # the tracking rule's output under out_dir


def store_uri(recipe_uri: str | None, environ=os.environ) -> str | None:
    """The tracking URI a run logs to, in MLflow's order of precedence after the recipe's own key; None when off."""
    uri = recipe_uri or environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_URI
    return None if uri.strip().lower() == OFF else uri


def experiment_name(config: dict) -> str:
    """The recipe's `tracking.experiment`, else the name of its out_dir (outputs/demo -> demo)."""
    return config["tracking"]["experiment"] or os.path.basename(os.path.abspath(config["out_dir"]))


def uri_problem(uri: str) -> str | None:
    """What is wrong with a tracking URI, in words; None for one MLflow can log to."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme or (len(scheme) == 1 and uri[1:3] in (":\\", ":/")):  # a bare path (or a Windows drive)
        return None
    if scheme not in SCHEMES:
        return (f"{uri!r} has the unknown scheme {parts.scheme!r}; use sqlite:///path/to/mlflow.db, "
                f"http(s)://host:port, file:///path, a database URL ({', '.join(SCHEMES[4:7])}), or {OFF!r}")
    if scheme == "sqlite" and parts.path in ("", "/"):
        return f"{uri!r} names no database file (an in-memory store would lose every run); write sqlite:///mlflow.db"
    if scheme in ("http", "https") and not parts.hostname:
        return f"{uri!r} names no host; write {scheme}://host:port"
    return None


def tracking_problems(config: dict, environ=os.environ) -> list[str]:
    """The recipe's `tracking` keys, and the environment's MLFLOW_TRACKING_URI when the recipe leaves the URI to it."""
    tracking, problems = config["tracking"], []
    if tracking["uri"]:
        where, uri = "tracking.uri", tracking["uri"]
    else:
        where, uri = f"the environment variable {ENVIRONMENT_VARIABLE}", environ.get(ENVIRONMENT_VARIABLE)
    if uri is not None and uri.strip().lower() != OFF and (problem := uri_problem(uri.strip())):
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
