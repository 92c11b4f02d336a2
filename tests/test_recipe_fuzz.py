"""A recipe fuzzer: fragments drawn from config/schema.yaml, valid and deliberately not, applied to the demo, K-fold
and blend recipes. Each must either pass the plan-time check with its value read by the run, or stop it with one line
naming the key; nothing may crash. The check runs in process, through pipeline.workflow.recipe_check.checked, the
function rules/recipe.smk calls at parse time; a few draws also go through `snakemake -n` to prove the two agree.

Hypothesis keeps every failing example in tests/fuzz-examples/ (committed), so a case once found is replayed first
on every later run; the faults issue 33 listed are pinned as explicit examples besides.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from conftest import REPO, copy_workflow
from pipeline.recipe import files, members
from pipeline.recipe.defaults import filled, recipe_schema, section_keys
from pipeline.workflow import recipe_check
from pipeline.workflow.unused_keys import WORKFLOW_READS, readers

BASES = {"demo": ["config/demo.yaml"], "kfold": ["config/demo.yaml", "config/demo_kfold.yaml"],
         "blend": ["config/demo.yaml", "config/demo_kfold.yaml", "config/demo_blend.yaml"]}
FRAGMENT = "fragment.yaml"
SCHEMA = recipe_schema()
DATABASE = DirectoryBasedExampleDatabase(str(REPO / "tests" / "fuzz-examples"))


def resolved(schema: dict) -> dict:
    while "$ref" in schema:
        named = SCHEMA["$defs"][schema["$ref"].rpartition("/")[2]]
        schema = {**named, **{key: value for key, value in schema.items() if key != "$ref"}}
    return schema


def schema_leaves(schema: dict = SCHEMA, path: tuple = ()) -> list[tuple[tuple, dict]]:
    """(path, schema) of every key, down to three levels; a list section's keys under its first item
    (finetune[0].size, finetune[0].regularise.drop_path)."""
    schema = resolved(schema)
    if schema.get("type") == "array" and section_keys(schema) and len(path) == 1:
        return [leaf for key, value in section_keys(schema).items()
                for leaf in schema_leaves(value, path + (0, key))]
    named = len([part for part in path if isinstance(part, str)])
    if schema.get("properties") and named < 3:
        return [leaf for key, value in schema["properties"].items() for leaf in schema_leaves(value, path + (key,))]
    return [(path, schema)] if path else []


LEAVES = schema_leaves()
# Strings that mean something to the keys that take free text; any other text is drawn too.
TEXTS = ["none", "auto", "cpu", "imagenet", "packaged", "resnet10t", "tf_efficientnet_lite0", "no_such_net",
         "sqlite:///:memory:", "sqlite://", "sqlite:///fuzz.db", "ftp://x", "http://", "outputs/fuzz",
         "data/fuzz-nowhere", "0", "", " "]


def numbers(schema: dict, integer: bool):
    low = schema.get("minimum", schema.get("exclusiveMinimum", -5))
    high = schema.get("maximum", schema.get("exclusiveMaximum", low + 400))
    if integer:
        return st.integers(int(low) - 2, int(high) + 2)
    return st.floats(low - 1, high + 1, allow_nan=False) | st.sampled_from([low, high, 1.0e-3, 0.0])


def values(schema: dict, depth: int = 0):
    """Values near what `schema` takes, inside and just outside its bounds, of its types and of others."""
    schema = resolved(schema)
    options = [st.sampled_from(schema["enum"] + ["bogus"])] if "enum" in schema else []
    for branch in schema.get("oneOf", []) + schema.get("anyOf", []):
        options.append(values(branch, depth + 1))
    kinds = schema.get("type", [])
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        options.append({"integer": numbers(schema, True), "number": numbers(schema, False), "boolean": st.booleans(),
                        "null": st.none(), "string": st.sampled_from(TEXTS) | st.text(max_size=6),
                        "array": st.lists(values(schema.get("items", {}), depth + 1), max_size=3) if depth < 2
                        else st.just([]),
                        "object": st.just({})}[kind])
    wrong = st.sampled_from(["abc", "1e-3", -1, 0, 2.5, True, [1], {"x": 1}, None])
    return st.one_of(*options, wrong) if options else wrong


def fragment_setting(base: dict, path: tuple, value) -> dict:
    """A fragment setting `path` to `value`: lists are replaced whole when merged, so a list section comes along."""
    nested = value
    for part in reversed(path[2:] if len(path) > 1 and isinstance(path[1], int) else path[1:]):
        nested = {part: nested}
    if len(path) > 1 and isinstance(path[1], int):  # an item's key: the whole list, its first item changed
        items = copy.deepcopy(base.get(path[0]) or [{}])
        items[0] = members.merged(items[0], nested)
        return {path[0]: items}
    return {path[0]: nested}


@st.composite
def cases(draw):
    """(base recipe, fragment text, the keys a refusal may name, the paths it sets, whether it must be refused)."""
    base_name = draw(st.sampled_from(sorted(BASES)))
    base = merged_base(base_name)
    kind = draw(st.sampled_from(["value", "value", "value", "unknown", "wrong_section", "duplicate", "needs"]))
    if kind == "value":  # one or two keys set, valid or not
        leaves = draw(st.lists(st.sampled_from(LEAVES), min_size=1, max_size=2, unique_by=lambda leaf: leaf[0]))
        fragment = {}
        for path, schema in leaves:
            fragment = members.merged(fragment, fragment_setting(base, path, draw(values(schema))))
        return base_name, yaml.safe_dump(fragment), [str(path[-1]) for path, _ in leaves], \
            [path for path, _ in leaves], False
    path, _ = draw(st.sampled_from(LEAVES))
    key, parent = str(path[-1]), path[:-1]
    known = set(at_schema(parent))
    if kind == "unknown":
        typo = draw(st.sampled_from([key + "s", key[:-1], key.upper(), "colour"]))
        typo = typo if typo not in known else "colour"
        return base_name, yaml.safe_dump(fragment_setting(base, parent + (typo,), 1)), [typo], [], True
    if kind == "wrong_section":
        other = draw(st.sampled_from([leaf[0][-1] for leaf in LEAVES if len(leaf[0]) > 1]))
        other = other if other not in known else "colour"
        return base_name, yaml.safe_dump(fragment_setting(base, parent + (other,), 1)), [other], [], True
    if kind == "duplicate":
        indent = "  " if parent else ""
        text = f"{parent[0]}:\n" if parent and isinstance(parent[0], str) and len(parent) == 1 else ""
        return base_name, (text or "") + f"{indent if text else ''}{key}: 1\n{indent if text else ''}{key}: 2\n", \
            [key], [], True
    section = draw(st.sampled_from(["blend", "pseudo"]))  # on the demo's single split, members only: no blend
    needs = {"blend": {"blend": {}}, "pseudo": {"pseudo": {}, "members": {"solo": {}}}}[section]
    return "demo", yaml.safe_dump(needs), [section], [], True


def at_schema(parent: tuple) -> dict:
    """The keys the schema knows at `parent` (the top level's for ())."""
    schema = SCHEMA
    for part in parent:
        schema = resolved(schema)
        schema = schema["items"] if isinstance(part, int) else schema["properties"][part]
    schema = resolved(schema)
    return schema.get("properties") or {}


def merged_base(name: str) -> dict:
    recipe = {}
    for path in BASES[name]:
        recipe = members.merged(recipe, files.load(REPO / path))
    return recipe


def verdict(base_name: str, fragment: str) -> tuple[dict | None, list[str]]:
    """The plan-time check's answer, in process: (the checked recipe, []) or (None, its problem lines)."""
    sources = [(path, files.load(REPO / path)) for path in BASES[base_name]]
    try:
        written = files.parse(fragment, FRAGMENT)
        sources.append((FRAGMENT, written))
        return recipe_check.checked(members.merged(merged_base(base_name), written), sources).recipe, []
    except (recipe_check.RecipeRefused, files.RecipeFileError) as refused:
        return None, getattr(refused, "problems", None) or [str(refused)]


def declared_names(path: tuple) -> list[str]:
    """The names a stage may declare the key at `path` by: it, or a section holding it ("head.regularise", "head")."""
    parts = [part for part in path if not isinstance(part, int)]
    return [".".join(parts[:depth]) for depth in range(1, len(parts) + 1)]


def read_by_the_run(recipe: dict, path: tuple) -> bool:
    """Whether a stage of this run (or the workflow itself) reads the key at `path`."""
    read = readers(recipe)
    return any(name in WORKFLOW_READS or any(why == "" for why in read.get(name, ["?"]))
               for name in declared_names(path))


def check_case(base_name: str, fragment: str, keys: list[str], paths: list[tuple], must_refuse: bool) -> None:
    recipe, problems = verdict(base_name, fragment)
    event("refused" if recipe is None else "accepted")
    if recipe is None:
        assert problems and all("\n" not in line and "Traceback" not in line for line in problems), problems
        sections = {fragment.partition(":")[0]} | {str(path[0]) for path in paths}
        whole = [f"{section}: written, but this run would ignore the whole section" for section in sections]
        assert any(key in line for line in problems for key in keys) or \
            any(refused in line for line in problems for refused in whole), (keys, problems)
        return
    assert not must_refuse, f"accepted, though it cannot be right: {fragment!r}"
    for path in paths:
        assert read_by_the_run(recipe, path), f"{path} accepted but no stage of this run reads it"


@pytest.fixture(autouse=True)
def away_from_the_repository(tmp_path_factory, monkeypatch):
    """Relative data_dir and out_dir resolve in an empty folder, as for `snakemake -n` in a fresh copy."""
    monkeypatch.chdir(tmp_path_factory.getbasetemp())


# The fixture only moves to one empty folder, the same for every example.
@settings(max_examples=400, deadline=None, database=DATABASE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases())
@example(("blend", "members:\n  lite0: {}\n  lite0: {seed: 3}\n", ["lite0"], [], True))  # a member written twice
@example(("demo", "blend: {method: weights}\n", ["blend"], [], True))  # a blend without members
@example(("demo", "pseudo: {}\n", ["pseudo"], [], True))  # pseudo without members: an IndexError in rules/common.smk
@example(("demo", "tracking: {uri: 'sqlite:///:memory:'}\n", ["tracking.uri"], [], True))  # an in-memory store
@example(("demo", "model: {arch: resnet10t, weights: none}\nhead: {regularise: {drop_path: 0.1}}\n",
          ["drop_path"], [], True))  # drop_path on a timm body without drop-path layers
def test_every_fragment_is_used_or_refused_naming_its_key(case):
    check_case(*case)


@settings(max_examples=4, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases())
def test_snakemake_n_agrees_with_the_check_in_process(tmp_path_factory, case):
    base_name, fragment = case[:2]
    workflow = copy_workflow(tmp_path_factory.mktemp("fuzz"))
    (workflow / FRAGMENT).write_text(fragment)
    configfiles = [str(REPO / path) for path in BASES[base_name]] + [FRAGMENT]
    planned = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "--configfile", *configfiles],
                             cwd=workflow, capture_output=True, text=True)
    recipe, problems = verdict(base_name, fragment)
    assert (planned.returncode == 0) == (recipe is not None), (fragment, problems, planned.stderr[-2000:])
    for line in problems:
        assert line.split(": ", 1)[-1] in planned.stderr + planned.stdout


def test_every_key_of_the_schema_is_read_by_a_stage_or_the_workflow():
    """Else a recipe could write it and the run ignore it without a word."""
    declared = set(readers(filled(merged_base("blend")))) | set(WORKFLOW_READS)
    unread = sorted({".".join(str(part) for part in path) for path, _ in LEAVES
                     if not declared & set(declared_names(path))})
    assert not unread, f"no stage declares {unread} (RECIPE_KEYS) and the workflow does not read it (WORKFLOW_READS)"
