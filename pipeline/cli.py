"""What every stage's command line shares: a JSON `--params` slice of the recipe, threads, and a log header."""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import sys
import time
from functools import partial

from pipeline.io import write_json
from pipeline.recipe import defaults as recipe_defaults

# Set by the tests: a folder where each stage process records the keys of its slice it read.
PARAMS_AUDIT = "LESSON2_PARAMS_AUDIT"


class StageParams(dict):
    """A stage's slice with the schema's defaults filled in. A key read but missing has no default to fill (a derived
    value the workflow passes, or a recipe key the schema requires): the stage stops, naming it. A key the stage did
    not declare (RECIPE_KEYS, WORKFLOW_KEYS) is never its rule's to pass, so reading one is a bug in the stage.

    `as_passed` is the slice as given on the command line: what resume keys and checkpoints hash, so the digests of a
    workflow run stay those of the slice its rule wrote."""

    def __init__(self, filled: dict, as_passed: dict, declared: frozenset[str]):
        super().__init__(filled)
        self.as_passed, self.declared, self.read = as_passed, declared, set()

    def _reading(self, key):
        if key not in self.declared:
            raise KeyError(f"the stage reads {key!r}, which its RECIPE_KEYS / WORKFLOW_KEYS do not declare")
        self.read.add(key)

    def __getitem__(self, key):
        self._reading(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._reading(key)
        return super().get(key, default)

    def __contains__(self, key):
        self._reading(key)
        return super().__contains__(key)

    def updated(self, **values) -> StageParams:
        """This slice with `values` set (a checkpoint's own size, say); what is read of it counts as read of this one."""
        changed = StageParams({**self, **values}, self.as_passed, self.declared | values.keys())
        changed.read = self.read
        return changed

    def __missing__(self, key):
        fail(f"--params has no {key!r}, which this stage needs and the recipe schema has no default for")


def audit_reads(params: StageParams, folder: str) -> None:
    """At exit, which keys of its slice the stage read (tests/test_deps.py compares them with what its rule passes)."""
    stage = getattr(sys.modules["__main__"].__spec__, "name", "stage")
    record = {"stage": stage, "passed": sorted(params.as_passed)}
    atexit.register(lambda: write_json({**record, "read": sorted(params.read)},
                                       os.path.join(folder, f"{stage}.{os.getpid()}.json")))


def stage_params(recipe_keys: tuple[str, ...], workflow_keys: tuple[str, ...], text: str) -> StageParams:
    """--params as this stage sees it: the JSON slice plus the schema's defaults of the keys the stage declares."""
    try:
        as_passed = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error})") from None
    if not isinstance(as_passed, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, {\"key\": value, ...}")
    try:
        filled = recipe_defaults.complete(as_passed, recipe_keys)
    except recipe_defaults.InvalidParams as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    declared = frozenset(recipe_defaults.declared_keys(recipe_keys)) | frozenset(workflow_keys)
    params = StageParams(filled, as_passed, declared)
    if folder := os.environ.get(PARAMS_AUDIT):
        audit_reads(params, folder)
    return params


def stage_parser(doc: str | None, recipe_keys: tuple[str, ...] = (),
                 workflow_keys: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The common parser; `recipe_keys` are the schema names the stage's slice is spread from (see
    pipeline.recipe.defaults), whose defaults fill the keys the slice leaves out; `workflow_keys` what the workflow
    derives and passes besides (pipeline.workflow.slices builds the rule's slice from both)."""
    recipe_defaults.slice_validator(tuple(recipe_keys))  # a wrong declaration fails here, whatever the arguments
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    # A string default goes through `type` too: no --params at all still gets every default.
    parser.add_argument("--params", type=partial(stage_params, tuple(recipe_keys), tuple(workflow_keys)), default="{}",
                        help="this stage's slice of the recipe, as JSON (Snakemake passes it; see `snakemake -p -n`); "
                             "keys it leaves out take the recipe schema's defaults")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch / worker processes")
    return parser


def begin(stage: str, parser: argparse.ArgumentParser, argv: list[str] | None):
    """A stage's start: its arguments parsed, then its log header. Returns (arguments, --params slice, start time)."""
    args = parser.parse_args(argv)
    return args, args.params, announce(stage, args.params)


def announce(stage: str, params: dict) -> float:
    """Print what runs with which parameters, so every log starts with what produced it (once under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"[{stage}] {time.strftime('%Y-%m-%d %H:%M:%S')} params={json.dumps(params, sort_keys=True)}",
              flush=True)
    return time.perf_counter()


def finish(stage: str, started: float) -> None:
    print(f"[{stage}] done in {time.perf_counter() - started:.1f}s", flush=True)


@contextlib.contextmanager
def stopping_on(*errors: type[Exception]):
    """Errors a user can act on (weights that do not load, say) as one `error:` line and exit status 1."""
    try:
        yield
    except errors as error:
        fail(str(error))


def fail(message: str) -> None:
    """Stop with a one-line error a user can act on, instead of a traceback through our code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)
