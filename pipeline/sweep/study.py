"""The Optuna side of a sweep: the study in journal file storage under out_dir (an append-only log, safe on NFS, so a
Slurm sweep needs no database server), one driver per study at a time, the swept keys as Optuna distributions, the
recipe's own values as the first trial, and a resumed study's interrupted trials retried."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from pipeline.recipe.defaults import filled
from pipeline.recipe.space import Dimension, Settings

STUDY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")  # a trial's member is <study>_t<n>: a member name, unambiguous
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class StudyBusy(RuntimeError):
    """Another process drives this study."""


def folder(out_dir: str | Path, study: str) -> Path:
    return Path(out_dir) / "sweep" / study


@contextlib.contextmanager
def driving(study_dir: Path, study: str) -> Iterator[None]:
    """Hold the study's driver lock for the sweep's whole run; StudyBusy when another process holds it. The kernel
    drops the lock with the process, so a killed sweep never leaves a stale one."""
    study_dir.mkdir(parents=True, exist_ok=True)
    lock_path = study_dir / "driver.lock"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise StudyBusy(f"study {study!r} is being driven by {holder} ({lock_path}); wait for it to end, or "
                            "give this sweep another --study") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_study(study_dir: Path, study: str, settings: Settings, seed: int) -> optuna.Study:
    """The study, created or continued; the sampler's seed moves on with the trials already run, so a resumed
    study does not draw its first random trials again."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(study_dir / "journal.log")))
    existing = [s for s in storage.get_all_studies() if s.study_name == study]
    n_before = len(storage.get_all_trials(existing[0]._study_id)) if existing else 0
    sampler = optuna.samplers.TPESampler(seed=seed + n_before, n_startup_trials=settings.random_trials)
    return optuna.create_study(study_name=study, storage=storage, sampler=sampler, pruner=pruner(settings),
                               direction="minimize", load_if_exists=True)


def pruner(settings: Settings) -> optuna.pruners.BasePruner:
    """Each trial reports one intermediate value (its loss after the first fine-tune size, step 0)."""
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.prune_after, n_warmup_steps=0)
    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    return optuna.pruners.NopPruner()


def distribution(dimension: Dimension) -> BaseDistribution:
    if dimension.kind == "choice":
        return CategoricalDistribution([encoded(choice) for choice in dimension.choices])
    low, high = dimension.bounds
    if dimension.kind == "int":
        return IntDistribution(low, high)
    return FloatDistribution(float(low), float(high), log=dimension.log)


def encoded(choice: Any) -> Any:
    """A choice as Optuna keeps it: a lone number, string or bool as itself, anything else (a list of lrs) as JSON."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice)


def decoded(dimension: Dimension, value: Any) -> Any:
    if dimension.kind == "choice":
        return next(choice for choice in dimension.choices if encoded(choice) == value)
    return value


def values(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial, dimensions: list[Dimension]) -> dict:
    """The trial's value of each swept key, as the recipe writes it."""
    return {dim.key: decoded(dim, trial.params[dim.key]) for dim in dimensions}


def recipe_values(recipe: dict, dimensions: list[Dimension]) -> dict | None:
    """The recipe's own value of every swept key (written or the schema's), or None where one lies outside its
    distribution (then the recipe cannot be the first trial)."""
    found = {}
    for dim in dimensions:
        node: Any = filled(recipe)
        for part in dim.path:
            node = node[part]
        if not contains(distribution(dim), encoded(node)):
            return None
        found[dim.key] = encoded(node)
    return found


def contains(distribution: BaseDistribution, value: Any) -> bool:
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):  # a choice not among the choices, a list where a number goes
        return False


def distributions(dimensions: list[Dimension]) -> dict[str, BaseDistribution]:
    return {dim.key: distribution(dim) for dim in dimensions}


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Trials left running by a sweep that was killed: each marked failed and its values asked again first, so the
    new trial reads what the old one finished (same chain, shared work) and computes only the rest."""
    interrupted = [trial for trial in study.get_trials(deepcopy=False) if trial.state == TrialState.RUNNING]
    for trial in interrupted:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return [trial.number for trial in interrupted]


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [trial for trial in study.get_trials(deepcopy=False) if trial.state in FINISHED]


def best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [trial for trial in study.get_trials(deepcopy=False) if trial.state == TrialState.COMPLETE]
    return min(complete, key=lambda trial: trial.value) if complete else None


def seconds(trial: optuna.trial.FrozenTrial) -> float | None:
    """From ask to tell; None for a trial still running."""
    if trial.datetime_complete and trial.datetime_start:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None
