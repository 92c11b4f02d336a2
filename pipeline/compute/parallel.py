"""Chunked process pools with a progress bar: many small per-image tasks, little scheduling overhead.

Forked `multiprocessing` workers rather than joblib's loky: when a job is SIGKILLed (OOM killer, a user, a test),
forked pool workers see their task pipe close and exit, whereas loky's workers outlive the parent and keep the
job's log pipe open, so Snakemake would wait for the killed job forever.
"""
from __future__ import annotations

import math
import multiprocessing

from tqdm import tqdm


def map_chunks(function, items: list, n_jobs: int, desc: str) -> list:
    """`function(chunk) -> list` over chunks of `items` in worker processes; results in input order."""
    n_jobs = max(1, n_jobs)
    size = max(1, math.ceil(len(items) / (n_jobs * 8)))
    chunks = [items[i: i + size] for i in range(0, len(items), size)]
    results = []
    with tqdm(total=len(items), desc=desc, disable=None) as bar, \
            multiprocessing.get_context("fork").Pool(n_jobs) as pool:
        for chunk_result in pool.imap(function, chunks):
            results.extend(chunk_result)
            bar.update(len(chunk_result))
    return results
