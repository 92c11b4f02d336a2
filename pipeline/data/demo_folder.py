"""The demo builder's claim on its data folder: the one place the workflow may write under a `data_dir`.

A user's competition data is read-only to the workflow. Only the demo builder writes there, and only into a folder
it created itself or found empty: it marks such a folder with `OWNER_MARKER` before writing anything, so it can
always tell its own folder (which it may clear and rebuild) from anyone else's (which it refuses). The Snakemake rule
that runs the builder declares only `BUILT_MARKER` as its output, never the data files, so Snakemake itself never
deletes anything under `data_dir` either. Both markers are hidden files, which the data fingerprint ignores.
"""
from __future__ import annotations

import shutil
from pathlib import Path

OWNER_MARKER = ".built-by-lesson2-demo"
BUILT_MARKER = ".lesson2-demo-complete.json"
# The demo's class names (the recipe checks read them before the builder runs).
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def default_classes(layout: str) -> list[str]:
    """The classes a demo recipe without `demo.classes` builds: all ten digits, or two for Dogs vs Cats' layout."""
    return DIGIT_NAMES if layout == "csv" else ["one", "seven"]



class NotTheDemoFolder(RuntimeError):
    """The folder holds files the demo builder did not create: it must not write there."""


def ownership_problem(folder: str | Path) -> str | None:
    """Why the demo builder may not write into `folder`; None when it may (absent, empty, or its own)."""
    folder = Path(folder)
    if not folder.exists() or (folder.is_dir() and (folder / OWNER_MARKER).is_file()):
        return None
    if not folder.is_dir():
        return f"{folder} is a file, not a folder; the demo builder writes only into a folder it creates"
    entries = sorted(entry.name for entry in folder.iterdir())
    if not entries:
        return None
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    return (f"{folder} already holds files that the demo builder did not create ({shown}). The workflow never "
            f"writes into your data, and this recipe's `demo:` section would build its demo data set there, so "
            f"nothing was run. For your own data use a recipe without `demo:`: copy config/dogbreeds.yaml "
            f"(labels.csv + train/ + test/) or config/dogscats.yaml (train|valid/<class>/ + test/), set its data_dir "
            f"and out_dir, and run `snakemake --cores all --configfile my_recipe.yaml`. If {folder} is a demo data "
            f"set built by an earlier version of this workflow, delete it yourself and run again.")


def claim(folder: str | Path) -> Path:
    """Make `folder` the builder's to write: create it (or take an empty one) and mark it; an own folder is cleared
    for a rebuild, keeping only the owner mark. Raises NotTheDemoFolder for anything else."""
    folder = Path(folder)
    problem = ownership_problem(folder)
    if problem:
        raise NotTheDemoFolder(problem)
    folder.mkdir(parents=True, exist_ok=True)
    owner = folder / OWNER_MARKER
    if owner.is_file():
        for entry in folder.iterdir():
            if entry.name == OWNER_MARKER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    else:
        owner.write_text("This folder was created by the lesson2-pipeline demo builder (pipeline/stages/demo_data.py), "
                         "which may delete and rebuild everything in it. Keep your own data elsewhere.\n")
    return folder
