"""Atomic writes: every output appears under its final name only once it is complete.

A killed job therefore never leaves a half-written file that looks finished; the temporary
file lives in the destination folder so the final `os.replace` is a same-filesystem rename.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; outputs get the permissions a plain open() would give.
FILE_MODE = 0o666 & ~_current_umask()

# The user's cache folder, as torch hub and Hugging Face keep theirs: answers worth keeping across runs and working
# directories, each under a key of what decides it (the backbone check's, the precision probe's).
USER_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lesson2-pipeline"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete what a killed writer left behind (`atomic_path`'s hidden `.name.XXXX.tmp` files) in `folder`."""
    for stale in Path(folder).glob(".*.tmp*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def params_digest(params: dict, *input_files: str | os.PathLike) -> str:
    """What a result depends on: canonical JSON of its parameters and the contents of its input files."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for path in input_files:
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kwargs) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


@contextlib.contextmanager
def open_npy_for_writing(path: str | os.PathLike, shape: tuple[int, ...], dtype=np.float32) -> Iterator[np.memmap]:
    """A memory-mapped .npy to fill batch by batch, so a split's activations never sit in RAM at once."""
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        yield array
        array.flush()
        del array


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
