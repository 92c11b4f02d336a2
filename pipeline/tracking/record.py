"""What one workflow run produced, read from its out_dir for the tracking rule, in the terms MLflow logs: the recipe as
flat params, headline figures, per-epoch curves, which files belong to which model, and which stages reran.

No MLflow here: these are plain reads of the files the stages wrote, and the unit tests check them as such.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.io import read_json

# The figures every run is compared on, from calibration.json (the same keys for a single split's validation set, a
# K-fold run's out-of-fold predictions and a blend's); logged with the scope in front: valid_logloss_tta, oof_...
HEADLINE = ("logloss_no_tta", "logloss_tta", "logloss_calibrated", "accuracy_no_tta", "accuracy_tta",
            "accuracy_calibrated")
# A K-fold run's folds (cv_metrics.json), and a member's own out-of-fold figures beside them.
FOLD_SPREAD = ("fold_valid_logloss_mean", "fold_valid_logloss_std", "fold_valid_accuracy_mean",
               "fold_valid_accuracy_std")
MEMBER_FIGURES = ("oof_logloss", "oof_logloss_no_tta", "oof_accuracy", "oof_accuracy_no_tta") + FOLD_SPREAD
FOLD_FIGURES = ("valid_logloss", "valid_logloss_no_tta", "valid_accuracy", "valid_accuracy_no_tta")
PSEUDO_FIGURES = ("n_used", "fraction_used", "mean_confidence", "threshold")
BLEND_FIGURES = ("blend_oof_logloss", "blend_oof_accuracy", "in_sample_oof_logloss", "best_member_oof_logloss")
CURVE_COLUMNS = ("train_loss", "valid_loss", "accuracy")
# What the tracking rule logs as artifacts: the results people open. Arrays and weights stay in the out_dir (weights
# go along with tracking.log_models); so do the out-of-fold tables, tens of MB per run on a real competition.
ARTIFACT_SUFFIXES = (".png", ".json", ".csv", ".html")
NOT_ARTIFACTS = ("oof.csv",)


@dataclass(frozen=True)
class Model:
    """One trained chain: a member's fold, a fold of a K-fold run, or a single split's model (both None)."""
    member: str | None
    fold: int | None
    dir: Path

    @property
    def name(self) -> str:
        parts = ([self.member] if self.member else []) + ([f"fold {self.fold}"] if self.fold is not None else [])
        return ", ".join(parts) or "model"


@dataclass
class RunRecord:
    """A finished workflow run as the tracking rule sees it (the rule passes the layout, the files are read here)."""
    recipe: dict
    out_dir: Path
    scope: str                                   # "oof" (K-fold, blends) or "valid" (one validation set)
    models: list[Model]
    member_dirs: dict[str, Path]
    files: list[Path]                            # the run's results: the tracking rule's inputs
    log_models: bool = False
    checkpoints: list[Path] = field(default_factory=list)

    @classmethod
    def from_layout(cls, recipe: dict, layout: dict, files: list[str]) -> "RunRecord":
        models = [Model(model["member"], model["fold"], Path(model["dir"])) for model in layout["models"]]
        member_dirs = {name: Path(path) for name, path in layout["member_dirs"].items()}
        return cls(recipe, Path(recipe["out_dir"]), layout["scope"], models, member_dirs,
                   [Path(path) for path in dict.fromkeys(files)], layout["log_models"],
                   [Path(path) for path in layout["checkpoints"]])

    def owner(self, path: Path) -> Model | str | None:
        """The model (deepest folder first) or member a file belongs to; None for the run's own files."""
        for model in sorted(self.models, key=lambda m: -len(m.dir.parts)):
            if model.dir != self.out_dir and path.is_relative_to(model.dir):
                return model
        return next((name for name, folder in self.member_dirs.items() if path.is_relative_to(folder)), None)

    def artifacts(self) -> list[Path]:
        keep = [path for path in self.files if path.suffix in ARTIFACT_SUFFIXES and path.name not in NOT_ARTIFACTS]
        return keep + (self.checkpoints if self.log_models else [])

    def curve_logs(self, model: Model) -> list[Path]:
        """The training logs (log.csv) of one model's stages, in training order (the head, then each size)."""
        logs = [path for path in self.files if path.name == "log.csv" and path.is_relative_to(model.dir)
                and (model.dir == self.out_dir or self.owner(path) == model)]
        return sorted(logs, key=lambda path: (path.parent.name != "head", str(path)))

    def calibration(self) -> dict:
        return read_json(self.out_dir / "calibration" / "calibration.json")


def flatten(recipe, prefix: str = "") -> dict[str, str]:
    """A recipe as MLflow params: nested keys joined with dots, list items of mappings by index
    (finetune.1.fits.0.lr), a list of plain values kept whole ([0.001, 0.0033, 0.01])."""
    if isinstance(recipe, dict) and (recipe or not prefix):
        items = recipe.items()
    elif isinstance(recipe, list) and any(isinstance(item, (dict, list)) for item in recipe):
        items = enumerate(recipe)
    else:
        return {prefix: recipe if isinstance(recipe, str) else json.dumps(recipe)}
    flat = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changes(old: dict[str, str], new: dict[str, str]) -> list[tuple[str, str | None, str | None]]:
    """(key, old value, new value) for each param that differs, in the new recipe's order, removed keys last."""
    keys = list(new) + [key for key in old if key not in new]
    return [(key, old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)]


def numbers(mapping: dict, keys=None, prefix: str = "") -> dict[str, float]:
    """The finite numeric values of a results file (its top level), as metrics."""
    return {f"{prefix}{key}": float(value) for key, value in mapping.items()
            if (keys is None or key in keys) and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def headline(calibration: dict, scope: str) -> dict[str, float]:
    """The figures a run is compared on: log loss and accuracy without TTA, with TTA and calibrated."""
    figures = numbers(calibration, HEADLINE, f"{scope}_")
    figures.update(numbers(calibration, ("temperature", "plain_weight"), "calibration_"))
    return figures


def blend_metrics(weights: dict, blend: str) -> dict[str, float]:
    """A blend's cross-fitted and in-sample out-of-fold figures and each member's weight."""
    figures = numbers(weights, BLEND_FIGURES, f"{blend}.")
    figures.update({f"{blend}.weight.{member['name']}": float(member["weight"])
                    for member in weights["members"] if member.get("weight") is not None})
    return figures


def model_metrics(model: Model) -> dict[str, float]:
    """A fold's own validation figures (its TTA's metrics.json) and, for a pseudo-label student, its round's."""
    figures = numbers(read_json(model.dir / "metrics.json"), FOLD_FIGURES)
    if (model.dir / "pseudo_labels.json").is_file():
        figures.update(numbers(read_json(model.dir / "pseudo_labels.json"), PSEUDO_FIGURES, "pseudo_"))
    return figures


def curves(log_csv: Path, stage: str) -> list[tuple[str, float, int]]:
    """(metric, value, step) per epoch of a training stage's log.csv, one curve per phase and column; the step counts
    the phase's epochs across its fits."""
    log = pd.read_csv(log_csv)
    points = []
    for phase, rows in log.groupby("phase", sort=False):
        name = stage if phase.startswith("size ") else f"{stage}_{phase}"
        for step, row in enumerate(rows.itertuples(index=False)):
            points += [(f"{name}/{column}", float(getattr(row, column)), step) for column in CURVE_COLUMNS
                       if math.isfinite(getattr(row, column))]
    return points


def stage_name(log_csv: Path, model_dir: Path) -> str:
    """head/log.csv -> head; finetune/1_224/log.csv -> finetune_1_224."""
    return "_".join(log_csv.parent.relative_to(model_dir).parts)


def stages_rerun(out_dir: Path, since: float | None) -> list[str]:
    """The stages whose logs were written after `since` (seconds since the epoch; None: all), each once with the
    number of its jobs, in the order they ran: the stages this run (or the runs since the last logged one) ran."""
    written = []
    for log in Path(out_dir).rglob("logs/*.log"):
        modified = log.stat().st_mtime
        if log.stem != "track" and (since is None or modified > since):
            written.append((modified, log.stem))
    counts = Counter(stem for _, stem in written)
    in_order = list(dict.fromkeys(stem for _, stem in sorted(written)))
    return [stem if counts[stem] == 1 else f"{stem} x{counts[stem]}" for stem in in_order]


def git_state(folder: Path) -> tuple[str, str]:
    """The checkout's commit and whether its tracked files changed ("true"/"false"); "unknown" outside a checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    if commit.returncode or status.returncode:
        return "unknown", "unknown"
    return commit.stdout.strip(), "true" if status.stdout.strip() else "false"


def relative_to_run(path: Path, base: Path) -> str:
    """An artifact's folder inside its run: the file's folder relative to the model's (or run's) folder."""
    folder = os.path.relpath(path.parent, base)
    return "" if folder == "." else folder
