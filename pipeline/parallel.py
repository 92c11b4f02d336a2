"""Chunked joblib process pools with a progress bar: many small per-image tasks, little scheduling overhead."""
from __future__ import annotations

import math

from joblib import Parallel, delayed
from tqdm.auto import tqdm


def map_chunks(function, items: list, n_jobs: int, desc: str) -> list:
    """`function(chunk) -> list` over chunks of `items` in worker processes; results in input order."""
    n_jobs = max(1, n_jobs)
    size = max(1, math.ceil(len(items) / (n_jobs * 8)))
    chunks = [items[i: i + size] for i in range(0, len(items), size)]
    tasks = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(function)(chunk) for chunk in chunks)
    results = []
    with tqdm(total=len(items), desc=desc, disable=None) as bar:
        for chunk_result in tasks:
            results.extend(chunk_result)
            bar.update(len(chunk_result))
    return results
