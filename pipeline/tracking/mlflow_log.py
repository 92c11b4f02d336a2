"""MLflow: a workflow run logged as one MLflow run (its folds and members as nested runs), and runs read back for
`pipeline.compare` and the tracking rule's page. Only the tracking rule and `pipeline.compare` import this module:
MLflow's import costs seconds, which no training stage pays.

Every run this workflow logs carries the tag `run_kind`: `workflow` for the run itself, `member` and `fold` for its
nested runs; comparisons read the finished `workflow` runs only.
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import logging
import os
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

# A server that cannot be reached should cost a run seconds, not MLflow's default minutes of retries (7 retries with
# a backoff factor of 2); a user's own settings win.
for _variable, _value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                          "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}.items():
    os.environ.setdefault(_variable, _value)

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag, ViewType  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402

from pipeline.tracking import record as run_record  # noqa: E402
from pipeline.io import read_json  # noqa: E402
from pipeline.tracking.record import RunRecord  # noqa: E402
from pipeline.tracking.runs import LEADERBOARD  # noqa: E402

WORKFLOW = "workflow"
LOCK_WAIT = 300               # seconds to wait for another logging into the same local store

# MLflow's own INFO lines ("Creating initial MLflow database tables...") and urllib3's retry warnings would turn a
# failed logging's one line into many.
for _name in ("mlflow", "alembic", "urllib3"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class StoreLocked(TimeoutError):
    """Another logging held the local store for longer than LOCK_WAIT."""


def local_store_path(uri: str) -> Path | None:
    """The file or folder of a local store (a SQLite database or a file store); None for a server or database."""
    parts = urlsplit(uri)
    if parts.scheme == "sqlite":
        return Path(parts.path[1:])  # sqlite:///mlflow.db -> mlflow.db; sqlite:////abs/x.db -> /abs/x.db
    if parts.scheme == "file":
        return Path(parts.path)
    return Path(uri) if not parts.scheme or len(parts.scheme) == 1 else None


@contextlib.contextmanager
def store_lock(uri: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold `<store>.lock` while logging into a local store: two workflows finishing at once would otherwise both
    create a new database's tables, or interleave their runs' writes until SQLite gives up waiting."""
    store = local_store_path(uri)
    if store is None:
        yield
        return
    store.parent.mkdir(parents=True, exist_ok=True)
    lock_path = store.with_name(store.name + ".lock")
    deadline = time.monotonic() + wait
    with open(lock_path, "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreLocked(f"{lock_path} held by another logging for over {wait:.0f} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it as a model-training experiment (the UI then opens on its runs)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def workflow_runs(client: MlflowClient, experiment_ids: list[str], limit: int = 1000) -> list:
    """The finished workflow runs of these experiments, newest first."""
    return client.search_runs(experiment_ids, f"tags.run_kind = '{WORKFLOW}' and attributes.status = 'FINISHED'",
                              ViewType.ACTIVE_ONLY, max_results=limit, order_by=["attributes.start_time DESC"])


def previous_run(client: MlflowClient, experiment: str, out_dir: str):
    """The last finished run logged for this out_dir, or None."""
    return next((run for run in workflow_runs(client, [experiment]) if run.data.tags.get("out_dir") == out_dir), None)


def _metric(key: str, value: float, step: int = 0, at: int | None = None) -> Metric:
    return Metric(key, value, at or int(time.time() * 1000), step)


def _log(client: MlflowClient, run_id: str, metrics: dict | list = (), params: dict | None = None,
         tags: dict | None = None) -> None:
    """One batch (MLflow splits it into its own chunks): metrics as {key: value} or (key, value, step) triples."""
    at = int(time.time() * 1000)
    entries = ([_metric(key, value, 0, at) for key, value in metrics.items()] if isinstance(metrics, dict)
               else [_metric(key, value, step, at) for key, value, step in metrics])
    client.log_batch(run_id, metrics=entries, params=[Param(k, v) for k, v in (params or {}).items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()], synchronous=True)


def _log_files(client: MlflowClient, run_id: str, files: list[Path], base: Path) -> None:
    for path in files:
        client.log_artifact(run_id, str(path), run_record.relative_to_run(path, base) or None)


def _child(client: MlflowClient, experiment: str, parent: str, name: str, kind: str, tags: dict) -> str:
    run = client.create_run(experiment, run_name=name,
                            tags={MLFLOW_PARENT_RUN_ID: parent, "run_kind": kind, **tags})
    return run.info.run_id


def log_workflow_run(client: MlflowClient, experiment: str, record: RunRecord, tags: dict, name: str,
                     description: str) -> str:
    """The run and its nested runs, each with its metrics, curves and files; returns the run's id. A logging that
    fails part-way deletes what it made, so a store never shows half a run as finished."""
    run = client.create_run(experiment, run_name=name, tags={"run_kind": WORKFLOW, "mlflow.note.content": description,
                                                            "mlflow.user": getpass.getuser(), **tags})
    made = [run.info.run_id]
    try:
        _log_run_contents(client, experiment, record, run.info.run_id, made)
    except BaseException:
        for run_id in reversed(made):
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
                client.delete_run(run_id)
        raise
    return run.info.run_id


def _log_run_contents(client: MlflowClient, experiment: str, record: RunRecord, run_id: str, made: list[str]) -> None:
    metrics = run_record.headline(record.calibration(), record.scope)
    for path in record.files:
        if path.name == "cv_metrics.json" and path.parent == record.out_dir:
            metrics.update(run_record.numbers(read_json(path), run_record.FOLD_SPREAD))
        elif path.name == "weights.json":
            metrics.update(run_record.blend_metrics(read_json(path), path.parent.name))
    _log(client, run_id, metrics, run_record.flatten(record.recipe))
    member_runs = {}
    for member, folder in record.member_dirs.items():
        member_runs[member] = _child(client=client, experiment=experiment, parent=run_id, name=member, kind="member",
                                     tags={"member": member})
        made.append(member_runs[member])
        cv = read_json(folder / "oof" / "cv_metrics.json")
        _log(client, member_runs[member], run_record.numbers(cv, run_record.MEMBER_FIGURES),
             run_record.flatten(record.recipe.get("members", {}).get(member, {})))
    owned: dict = {}
    for path in record.artifacts():
        owned.setdefault(record.owner(path), []).append(path)
    for model in record.models:
        model_run = run_id
        if model.dir != record.out_dir:
            parent = member_runs.get(model.member, run_id)
            model_run = _child(client=client, experiment=experiment, parent=parent, name=model.name, kind="fold",
                               tags={"fold": model.fold, **({"member": model.member} if model.member else {})})
            made.append(model_run)
            _log(client, model_run, run_record.model_metrics(model))
        points = [point for log in record.curve_logs(model)
                  for point in run_record.curves(log, run_record.stage_name(log, model.dir))]
        _log(client, model_run, points)
        if model.dir != record.out_dir:
            _log_files(client, model_run, owned.pop(model, []), model.dir)
            client.set_terminated(model_run, "FINISHED")
    for member, member_run in member_runs.items():
        _log_files(client, member_run, owned.pop(member, []), record.member_dirs[member])
        client.set_terminated(member_run, "FINISHED")
    _log_files(client, run_id, [path for paths in owned.values() for path in paths], record.out_dir)
    client.set_terminated(run_id, "FINISHED")


def record_leaderboard(client: MlflowClient, run_id: str, score: float) -> None:
    client.log_metric(run_id, LEADERBOARD, score)

