"""Validating payloads against the component schemas of docs/asyncapi.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["SPEC", "check", "validator"]

SPEC = yaml.safe_load((Path(__file__).parents[2] / "docs" / "asyncapi.yaml").read_text())


def validator(schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema, with ``#/components/...`` refs resolved."""
    root = Resource.from_contents(SPEC, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:asyncapi", root)
    schema = {"$ref": f"urn:asyncapi#/components/schemas/{schema_name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def check(schema_name: str, payload: Any) -> None:
    """Assert that ``payload`` (decoded JSON) is valid against the named schema."""
    errors = sorted(validator(schema_name).iter_errors(payload), key=str)
    assert not errors, f"{schema_name}: {[e.message for e in errors]}"
