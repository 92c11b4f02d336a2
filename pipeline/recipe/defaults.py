"""The schema's defaults for a stage's flat `--params` slice: config/schema.yaml is the one home of every default, for
a stage the workflow runs and for one run by hand alike.

A rule builds a stage's slice by spreading recipe sections into one flat dict (`as_params(**MODEL, **LOADER, ...)`),
so a flat key no longer says which section it came from. Each stage therefore declares where its recipe keys come
from, as names in the schema:

    "loader"        a whole section: every key of it (for `finetune`, the keys of one of its items)
    "model.arch"    one key of a section
    "seed"          one top-level key

A flat key declared twice (say by "seed" and "split", which both have a `seed`) is refused: which default it gets would
depend on the order of the names. Keys of a slice that no name declares (derived values the workflow passes, such as
preprocessing, weights_digest, images, or a stage's size) are not the schema's business and pass as they are.

Filling is the workflow's own: jsonschema validation whose `properties` keyword also sets each missing key's default
(the recipe in jsonschema's FAQ, which Snakemake's `validate` uses on the whole recipe), here over an object schema of
the declared keys. So nested defaults (a fit's cycle_mult) are filled too, and a value the schema refuses is reported
naming its key.
"""
from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import yaml
from jsonschema import validators
from jsonschema.exceptions import best_match

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


class DeclarationError(ValueError):
    """A stage declares a name the schema does not have, or one flat key twice: a bug in the stage, not the recipe."""


class InvalidParams(ValueError):
    """A value in a slice that the schema refuses (the message names the key)."""


@cache
def recipe_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def section_keys(section: dict) -> dict | None:
    """The keys of a section: an object's properties, or those of an array's items (finetune); None for a plain key."""
    return section.get("properties") or section.get("items", {}).get("properties")


def declared_keys(names: tuple[str, ...]) -> dict[str, dict]:
    """{flat key: its schema} for a stage's declared names."""
    top_level = recipe_schema()["properties"]
    found, declared_by = {}, {}
    for name in names:
        section, _, key = name.partition(".")
        if section not in top_level:
            raise DeclarationError(f"{name!r}: the schema has no top-level key {section!r}")
        keys = section_keys(top_level[section])
        if key and key not in (keys or {}):
            raise DeclarationError(f"{name!r}: the schema's {section!r} has no key {key!r}")
        named = {key: keys[key]} if key else keys or {section: top_level[section]}
        for flat, schema in named.items():
            if flat in found:
                raise DeclarationError(f"{flat!r} is declared by both {declared_by[flat]!r} and {name!r}: "
                                       "its default would be ambiguous")
            found[flat], declared_by[flat] = schema, name
    return found


def _filling_defaults(validator_class):
    """`validator_class` whose `properties` keyword first sets each missing key to a copy of its default."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for key, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(key, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": properties_with_defaults})


@cache
def slice_validator(names: tuple[str, ...]):
    """A validator, filling defaults, for a flat slice of the declared keys (`$ref`s resolve to the schema's $defs)."""
    schema = recipe_schema()
    flat = {"$schema": schema["$schema"], "$defs": schema["$defs"], "type": "object",
            "properties": declared_keys(names)}
    return _filling_defaults(validators.validator_for(flat))(flat)


def key_path(path) -> str:
    """['fits', 0, 'lr'] -> 'fits[0].lr'."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")


def complete(params: dict, names: tuple[str, ...]) -> dict:
    """A copy of `params` with the schema's default for every declared key it lacks; raises InvalidParams on the first
    declared value the schema refuses."""
    filled = copy.deepcopy(params)
    errors = list(slice_validator(tuple(names)).iter_errors(filled))  # validating is what fills: run it through
    if errors:
        error = best_match(errors)
        raise InvalidParams(f"{key_path(error.absolute_path) or 'the slice'}: {error.message}")
    return filled


@cache
def fit_validator():
    """A validator, filling defaults, for one item of a `fits` list (the schema's `$defs.fit`)."""
    schema = recipe_schema()
    fit = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/fit"}
    return _filling_defaults(validators.validator_for(fit))(fit)


def complete_fit(fit: dict) -> dict:
    """A copy of one `fits` item with the schema's defaults for what it omits (cycle_len, cycle_mult)."""
    filled = copy.deepcopy(fit)
    errors = list(fit_validator().iter_errors(filled))
    if errors:
        error = best_match(errors)
        raise InvalidParams(f"fit {fit}: {key_path(error.absolute_path) or 'the fit'}: {error.message}")
    return filled


def defaults(names: tuple[str, ...]) -> dict:
    """The schema's defaults of the declared keys, by flat key (keys without a default are left out)."""
    return complete({}, names)


@cache
def recipe_validator():
    schema = recipe_schema()
    return _filling_defaults(validators.validator_for(schema))(schema)


def filled(recipe: dict) -> dict:
    """A copy of a whole recipe with the schema's defaults for what it omits, nested ones too (what Snakemake's
    `validate` does to `config`). The recipe is checked against the schema first (pipeline.recipe.checks)."""
    result = copy.deepcopy(recipe)
    for _ in recipe_validator().iter_errors(result):  # validating is what fills: run it through
        pass
    return result
