"""The config against its JSON schema (workflow/schemas/config.schema.yaml): defaults filled in,
the first violation as one sentence naming the key."""
from __future__ import annotations

import copy
from pathlib import Path

from ifss.config import load_yaml
from ifss.errors import IfssError, unknown


def validate_schema(cfg: dict, schema_file: str | Path) -> None:
    """Check `cfg` in place and fill in the schema's defaults (as Snakemake's `validate` does)."""
    from jsonschema import ValidationError, validators

    schema = load_yaml(schema_file)
    base = validators.validator_for(schema)
    properties = base.VALIDATORS["properties"]

    def fill_defaults(validator, props, instance, subschema):
        if isinstance(instance, dict):
            for key, spec in props.items():
                if "default" in spec and key not in instance:
                    instance[key] = copy.deepcopy(spec["default"])  # no default shared by two keys
        yield from properties(validator, props, instance, subschema)

    validator = validators.extend(base, {"properties": fill_defaults})(schema)
    try:
        validator.validate(cfg)
    except ValidationError as err:
        raise IfssError(schema_error_message(err)) from None


def schema_error_message(err) -> str:
    """One sentence for a jsonschema ValidationError: the config key, what is wrong, the fix."""
    from jsonschema.exceptions import best_match

    if err.context:  # oneOf / anyOf: the branch that came closest says most
        err = best_match(err.context)
    path = ".".join(str(p) for p in err.absolute_path)
    where = f"config key {path!r}" if path else "the config"
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        section = f"under {path}" if path else "at the top level"
        return str(unknown("config key", extra[0], allowed, section))  # the first, if several
    if err.validator == "propertyNames":
        return f"{where}: name {err.instance!r} is not allowed ({err.message})"
    if (err.validator == "type" and err.validator_value == "boolean"
            and isinstance(err.instance, str) and err.instance.lower() in ("true", "false")):
        # Snakemake's --config reads only True and False as booleans
        return (f"{where}: {err.instance!r} is a string; write {err.instance.capitalize()} "
                f"(e.g. --config {path}={err.instance.capitalize()})")
    return f"{where}: {err.message}"
