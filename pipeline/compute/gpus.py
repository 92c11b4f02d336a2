"""One GPU per process on a box with several: each torch stage (each rank, under torchrun) claims a free GPU.

Snakemake's `--resources gpu=N` bounds how many GPU processes run at once; it does not say which card each one
gets, so without this every job would pick cuda:0. A claim is an exclusive `flock` on one lock file per GPU,
held for the life of the process: the kernel releases it when the process ends, however it ends (finished,
failed, killed), so a dead job never keeps its GPU. The locks live in one folder per machine (LESSON2_GPU_LOCK_DIR,
default <tmp>/lesson2-gpu-locks), so two workflows on one box share its GPUs too. A process that finds every GPU
claimed waits for one.

Under a scheduler that hands each job its own GPUs (Slurm sets CUDA_VISIBLE_DEVICES), nothing is claimed: the job
uses the devices it was given.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

_held = []  # the open lock files of this process's claims: closing one would release its GPU


def lock_dir() -> Path:
    return Path(os.environ.get("LESSON2_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "lesson2-gpu-locks")


def scheduler_assigned() -> bool:
    """True inside a Slurm job that was given GPUs: the scheduler already chose them."""
    return "SLURM_JOB_ID" in os.environ and "CUDA_VISIBLE_DEVICES" in os.environ


def gpu_names(device_count: int) -> list[str]:
    """A stable name per visible GPU for its lock file: the physical id CUDA_VISIBLE_DEVICES maps it to, if set."""
    visible = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    return visible[:device_count] if len(visible) >= device_count else [str(index) for index in range(device_count)]


def _try_lock(path: Path):
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim(device_count: int, folder: Path | None = None, poll_seconds: float = 0.5) -> int:
    """The index (among the visible devices) of a GPU no other process holds, held until this process ends."""
    folder = folder or lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    names = gpu_names(device_count)
    waiting_since = None
    while True:
        for index, name in enumerate(names):
            if handle := _try_lock(folder / f"gpu-{name}.lock"):
                _held.append(handle)
                if waiting_since is not None:
                    print(f"GPU {name} free after {time.monotonic() - waiting_since:.0f} s", flush=True)
                return index
        if waiting_since is None:
            waiting_since = time.monotonic()
            print(f"all {device_count} GPUs are held by other jobs (locks in {folder}); waiting for one", flush=True)
        time.sleep(poll_seconds)


def pick(device_count: int, local_rank: int = 0) -> int:
    """The CUDA device index this process should use: the scheduler's choice, the only GPU, or a claimed one."""
    if scheduler_assigned():
        return local_rank
    if device_count <= 1:
        return 0
    return claim(device_count)
