"""What every stage's command line shares: a JSON `--params` slice of the recipe, threads, and a log header."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial

from pipeline import recipe_defaults


class StageParams(dict):
    """A stage's slice with the schema's defaults filled in. A key read but missing has no default to fill (a derived
    value the workflow passes, or a recipe key the schema requires): the stage stops, naming it.

    `as_passed` is the slice as given on the command line: what resume keys and checkpoints hash, so the digests of a
    workflow run stay those of the slice its rule wrote."""

    def __init__(self, filled: dict, as_passed: dict):
        super().__init__(filled)
        self.as_passed = as_passed

    def __missing__(self, key):
        fail(f"--params has no {key!r}, which this stage needs and the recipe schema has no default for")


def stage_params(recipe_keys: tuple[str, ...], text: str) -> StageParams:
    """--params as this stage sees it: the JSON slice plus the schema's defaults of the keys the stage declares."""
    try:
        as_passed = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error})") from None
    if not isinstance(as_passed, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, {\"key\": value, ...}")
    try:
        return StageParams(recipe_defaults.complete(as_passed, recipe_keys), as_passed)
    except recipe_defaults.InvalidParams as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def stage_parser(doc: str | None, recipe_keys: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The common parser; `recipe_keys` are the schema names the stage's slice is spread from (see
    pipeline.recipe_defaults), whose defaults fill the keys the slice leaves out."""
    recipe_defaults.slice_validator(tuple(recipe_keys))  # a wrong declaration fails here, whatever the arguments
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    # A string default goes through `type` too: no --params at all still gets every default.
    parser.add_argument("--params", type=partial(stage_params, tuple(recipe_keys)), default="{}",
                        help="this stage's slice of the recipe, as JSON (Snakemake passes it; see `snakemake -p -n`); "
                             "keys it leaves out take the recipe schema's defaults")
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
