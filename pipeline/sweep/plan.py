"""A sweep as the command checked it, and how it stops."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pipeline.recipe.space import Dimension, Settings


class SweepRefused(ValueError):
    """Bad input found before any trial: one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Sweep:
    args: argparse.Namespace
    recipe: dict               # as written, the recipe files merged
    sources: list              # (file, what it wrote) of each recipe file, to name the file behind a problem
    dimensions: list[Dimension]
    settings: Settings
    out_dir: str
    kfold: bool
    folder: Path               # out_dir/sweep/<study>


class SweepFailed(RuntimeError):
    """The sweep cannot go on: every trial of a batch failed, no trial completed, or the study was started with
    another space or recipe."""
