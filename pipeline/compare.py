"""Compare two tracked runs of the workflow: the recipe keys that differ, and the headline figures side by side with
their deltas; record a public leaderboard score on a run, to see whether CV tracks the leaderboard.

    python -m pipeline.compare                     # the store's last two runs (of the newest run's experiment)
    python -m pipeline.compare RUN_A RUN_B         # any two: run ids (or their first characters), names or out_dirs
    python -m pipeline.compare --lb 0.0412 [RUN]   # record a public leaderboard score (on the last run by default)
    python -m pipeline.compare --list              # every run of the experiment, CV next to the leaderboard

The store is --tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this directory: where the workflow
logs when the recipe leaves tracking.uri unset and Snakemake runs here. `mlflow ui` shows the same runs. A store, run
or argument that does not work is one line on stderr and exit status 1 (2 for an argument); --debug (or
LESSON2_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from pipeline import cli
from pipeline.tracking import record as run_record
from pipeline.tracking import runs as tracked_runs
from pipeline.tracking import mlflow_log as tracking
from pipeline.tracking import store as tracking_store
from pipeline.tracking.runs import HEADLINE_ROWS, LEADERBOARD


class CompareError(LookupError):
    """A store, experiment or run that is not there or does not work: the message says what to give instead."""


def open_store(given: str | None):
    """An MLflow client on the store, refusing a local database that does not exist (MLflow would create it) or that
    is not a store (MLflow would write its tables into it)."""
    uri = tracking_store.store_uri(given)
    if given:
        where = "--tracking-uri"
    elif os.environ.get(tracking_store.ENVIRONMENT_VARIABLE):
        where = tracking_store.ENVIRONMENT_VARIABLE
    else:
        where = "the default store"
    if uri is None:
        raise CompareError(f"tracking is off ({where} is {tracking_store.OFF!r}): pass --tracking-uri STORE")
    if (problem := tracking_store.uri_problem(uri)) is not None:
        raise CompareError(f"{where}: {problem}")
    store = tracking.local_store_path(uri)
    if store is not None and not store.exists():
        raise CompareError(f"no tracking store at {store} ({uri}): run the workflow first, from this directory, or "
                           "pass --tracking-uri (the recipe's tracking.uri)")
    if urlsplit(uri).scheme.lower() == "sqlite" and (problem := tracking_store.sqlite_store_problem(store)) is not None:
        raise CompareError(f"{where} {uri}: {store} {problem}")
    with store_errors(uri):
        return tracking.MlflowClient(uri), uri


@contextlib.contextmanager
def store_errors(uri: str):
    """MLflow's and SQLAlchemy's errors as one line naming the store: they name neither the store nor the URI, and
    SQLAlchemy's add the SQL that failed."""
    try:
        yield
    except (MlflowException, SQLAlchemyError) as error:
        cause = getattr(error, "orig", None) or error  # the database's own words, without SQLAlchemy's SQL
        raise CompareError(f"the tracking store {uri} failed: {type(cause).__name__}: {cause}") from error


def experiment_ids(client, name: str | None) -> list[str]:
    if name is None:
        return [experiment.experiment_id for experiment in client.search_experiments()]
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = ", ".join(repr(e.name) for e in client.search_experiments()) or "none"
        raise CompareError(f"no experiment {name!r} in the store (experiments: {known})")
    return [experiment.experiment_id]


def find_run(runs: list, wanted: str):
    """A run by id (or the first characters of one), by name, or by out_dir (its newest run)."""
    by_id = [run for run in runs if run.info.run_id.startswith(wanted)]
    if len(by_id) > 1:
        raise CompareError(f"{wanted!r} starts {len(by_id)} run ids; give more characters")
    by_name = [run for run in runs if run.info.run_name == wanted]
    by_out_dir = [run for run in runs if run.data.tags.get("out_dir") == os.path.abspath(wanted)]
    found = by_id or by_name or by_out_dir
    if not found:
        raise CompareError(f"no run {wanted!r}: give a run id, a run name or an out_dir "
                           "(python -m pipeline.compare --list shows the runs)")
    return found[0]  # runs come newest first


def newest(runs: list):
    if not runs:
        raise CompareError("the store holds no finished run of the workflow yet")
    return runs[0]


def last_two(runs: list) -> tuple:
    """The newest run and the one before it in the same experiment."""
    newest_run = newest(runs)
    same = [run for run in runs if run.info.experiment_id == newest_run.info.experiment_id]
    if len(same) < 2:
        raise CompareError(f"the experiment of {newest_run.info.run_name!r} has no run before it: change "
                           "something and run the workflow again, or name two runs")
    return same[1], newest_run


def number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """Rows as aligned text, or as a Markdown table."""
    if markdown:
        lines = [header, ["---"] + ["---:"] * (len(header) - 1), *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(str(row[column])) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  " + "  ".join(str(cell).ljust(width) if column == 0 else str(cell).rjust(width)
                                      for column, (cell, width) in enumerate(zip(row, widths)))
                     for row in [header, *rows])


def describe_run(run) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.info.start_time / 1000))
    commit = run.data.tags.get("mlflow.source.git.commit", "unknown")[:10]
    dirty = " + changes" if run.data.tags.get("git_dirty") == "true" else ""
    return (f"{run.info.run_name} ({run.info.run_id[:8]}, started {started}, {run.data.tags.get('out_dir', '?')}, "
            f"commit {commit}{dirty})")


def comparison(a, b, markdown: bool) -> str:
    """The recipe keys that differ (old -> new) and the headline figures side by side."""
    lines = [f"A: {describe_run(a)}", f"B: {describe_run(b)}", ""]
    changed = run_record.changes(a.data.params, b.data.params)
    if changed:
        lines.append("recipe keys that differ (A → B):")
        rows = [[key, "(absent)" if old is None else old, "(absent)" if new is None else new]
                for key, old, new in changed]
        if markdown:
            lines.append(table(["key", "A", "B"], rows, True))
        else:
            width = max(len(key) for key, _, _ in rows)
            lines += [f"  {key.ljust(width)}  {old} → {new}" for key, old, new in rows]
    else:
        lines.append("recipe keys that differ: none (the code or the data changed: see the commits above)")
    scopes = {tracked_runs.scope(a), tracked_runs.scope(b)}
    where = "out of fold" if scopes == {"oof"} else "validation set" if scopes == {"valid"} else \
        "A and B scored on different rows: not the same figure"
    rows = []
    for label, name in HEADLINE_ROWS + (("leaderboard", LEADERBOARD),):
        old, new = tracked_runs.figure(a, name), tracked_runs.figure(b, name)
        rows.append([label, number(old), number(new),
                     number(new - old, signed=True) if old is not None and new is not None else "—"])
    lines += ["", f"headline figures ({where}):", table(["", "A", "B", "B − A"], rows, markdown)]
    return "\n".join(lines)


def leaderboard_table(runs: list, markdown: bool) -> str:
    """CV next to LB for every run that has a leaderboard score."""
    scored = [run for run in runs if tracked_runs.figure(run, LEADERBOARD) is not None]
    if not scored:
        return ""
    rows = [[run.info.run_name, run.info.run_id[:8], number(tracked_runs.figure(run, tracked_runs.CV)),
             number(tracked_runs.figure(run, LEADERBOARD))] for run in scored]
    return "CV against the leaderboard:\n" + table(["run", "id", "CV log loss (calibrated)", "leaderboard"], rows,
                                                    markdown)


def record_leaderboard(client, run, score: float) -> str:
    """Record the score, then refresh the run's out_dir pages (and log the CV-against-LB plot when there is one)."""
    tracking.record_leaderboard(client, run.info.run_id, score)
    experiment_runs = tracking.workflow_runs(client, [run.info.experiment_id])
    message = f"recorded leaderboard {score} on {describe_run(run)}"
    views = Path(run.data.tags.get("out_dir", "")) / "tracking"
    if views.is_dir():
        experiment = client.get_experiment(run.info.experiment_id).name
        tracked_runs.write_views(views, experiment, experiment_runs)
        message += f"\nrefreshed {views / tracked_runs.RUNS_PAGE}"
        if (plot := views / tracked_runs.CV_VS_LB).is_file():
            client.log_artifact(run.info.run_id, str(plot))
            message += f" and {plot}"
    return message


def finite_score(text: str) -> float:
    """--lb's number; nan or inf would be recorded on the run and skew every CV-against-LB fit after it."""
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return score


def argument_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m pipeline.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN", help="two runs to compare, or the run --lb scores")
    parser.add_argument("--lb", type=finite_score, metavar="SCORE", help="record a public leaderboard score on RUN")
    parser.add_argument("--list", action="store_true", help="list the experiment's runs, CV next to LB")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--tracking-uri", help="the store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--experiment", help="the experiment (default: the newest run's)")
    cli.add_debug_flag(parser)
    return parser


def run_command(args) -> None:
    """What main does once the arguments are parsed: list, record a score, or compare."""
    client, uri = open_store(args.tracking_uri)
    with store_errors(uri):
        runs = tracking.workflow_runs(client, experiment_ids(client, args.experiment))
        if args.list:
            listed = tracked_runs.runs_table(runs)
            rows = [[number(cell) if isinstance(cell, float) or cell is None else str(cell) for cell in row]
                    for row in listed.astype(object).where(listed.notna(), None).itertuples(index=False)]
            print(f"runs in {uri}, newest first:\n" + table(list(listed.columns), rows, args.markdown))
            return
        if args.lb is not None:
            run = find_run(runs, args.runs[0]) if args.runs else newest(runs)
            print(record_leaderboard(client, run, args.lb))
            runs = tracking.workflow_runs(client, [run.info.experiment_id])
        else:
            a, b = (find_run(runs, args.runs[0]), find_run(runs, args.runs[1])) if args.runs else last_two(runs)
            print(f"store: {uri}\n" + comparison(a, b, args.markdown))
            runs = tracking.workflow_runs(client, [b.info.experiment_id])
    if board := leaderboard_table(runs, args.markdown):
        print("\n" + board)


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser()
    args = parser.parse_args(argv)
    allowed = (0,) if args.list else (0, 1) if args.lb is not None else (0, 2)
    if len(args.runs) not in allowed:
        parser.error("give two runs to compare, none for the last two, or one with --lb")
    with cli.one_line_errors(args.debug, expected=(CompareError,)):
        run_command(args)


if __name__ == "__main__":
    main()
