"""What every stage's command line shares: a JSON `--params` slice of the recipe, threads, a log header, and one-line
errors (the commands run by hand, compare and predict, also turn any other error into one line unless --debug)."""
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
# Set (to anything but 0) to see a hand-run command's traceback, as --debug does.
DEBUG = "LESSON2_DEBUG"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line: argparse prints the whole usage first, which for a command of a
    dozen options buries the line that says what is wrong (--help still shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (--help lists the arguments)\n")


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
    parser = ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    # A string default goes through `type` too: no --params at all still gets every default.
    parser.add_argument("--params", type=partial(stage_params, tuple(recipe_keys), tuple(workflow_keys)), default="{}",
                        help="this stage's slice of the recipe, as JSON (Snakemake passes it; see `snakemake -p -n`); "
                             "keys it leaves out take the recipe schema's defaults")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch / worker processes")
    return parser


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """--debug for a command run by hand (see `one_line_errors`)."""
    parser.add_argument("--debug", action="store_true",
                        help=f"show an error's traceback instead of one line (as does {DEBUG}=1 in the environment)")


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


@contextlib.contextmanager
def one_line_errors(debug: bool, expected: tuple[type[Exception], ...] = ()):
    """A command a person runs (compare, predict): any error as one `error:` line and exit status 1, never a traceback
    through code the user did not write. An expected error (`expected`, or an OSError, which names its file) says
    what is wrong in its own words; anything else is called an internal error, with how to see more. `debug` (the
    command's --debug) or LESSON2_DEBUG lets the traceback through instead."""
    try:
        yield
    except KeyboardInterrupt:
        if debugging(debug):
            raise
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None  # the shell's status for a command stopped by Ctrl-C
    except Exception as error:
        if debugging(debug):
            raise
        said = " ".join(str(error).split())  # one line, even where a library's message has several
        if not isinstance(error, (*expected, OSError)):
            said = f"internal error: {type(error).__name__}: {said}; rerun with --debug for the traceback"
        fail(said)


def debugging(flag: bool) -> bool:
    return flag or os.environ.get(DEBUG, "0").strip() not in ("", "0")


def fail(message: str) -> None:
    """Stop with a one-line error a user can act on, instead of a traceback through our code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)
