"""One run per out_dir: an flock on `<out_dir>/.run.lock`, held for the life of the Snakemake process.

Snakemake's own lock lives in the working directory's `.snakemake/`, so two runs started from different directories
would write the same out_dir (and share its resume points). The kernel drops an flock when its holder dies, however
it dies, so a killed run never leaves a stale lock behind; the file itself only says who holds it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

LOCK_NAME = ".run.lock"


class OutDirInUse(RuntimeError):
    """Another live run holds the out_dir."""


def holder(lock_path: Path) -> str:
    """Who the lock file says holds it, in words."""
    try:
        info = json.loads(lock_path.read_text())
        return (f"pid {info['pid']} on {info['host']}, started {info['started']} in {info['cwd']}: "
                f"{info['command']}")
    except (OSError, ValueError, KeyError):
        return "a run that has not yet written its name"


def hold(out_dir: str | Path) -> IO:
    """Take the out_dir's lock or raise OutDirInUse naming its holder. Keep the returned file open: closing it (or
    the process ending) releases the lock."""
    lock_path = Path(out_dir) / LOCK_NAME
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(lock_path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise OutDirInUse(f"out_dir {out_dir} is in use by another run ({holder(lock_path)}); wait for it to end, "
                          "or give this recipe another out_dir") from None
    lock.truncate(0)
    lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "cwd": os.getcwd(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}))
    lock.flush()
    return lock
