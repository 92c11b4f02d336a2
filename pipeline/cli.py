"""What every stage's command line shares: a JSON `--params` slice of the recipe, threads, and a log header."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=json.loads, default={},
                        help="this stage's slice of the recipe, as JSON (Snakemake passes it; see `snakemake -p -n`)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch / worker processes")
    return parser


def announce(stage: str, params: dict) -> float:
    """Print what runs with which parameters, so every log starts with what produced it (once under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"[{stage}] {time.strftime('%Y-%m-%d %H:%M:%S')} params={json.dumps(params, sort_keys=True)}",
              flush=True)
    return time.perf_counter()


def finish(stage: str, started: float) -> None:
    print(f"[{stage}] done in {time.perf_counter() - started:.1f}s", flush=True)


def fail(message: str) -> None:
    """Stop with a one-line error a user can act on, instead of a traceback through our code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)
