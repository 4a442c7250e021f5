"""Validate envelopes against Timeback's published Caliper API (OpenAPI 3.1).

`validate_envelope(envelope)` checks the envelope against `Envelope` and its one event against
`TimebackTimeSpentEvent` or `TimebackActivityEvent` (by `type`), with Draft 2020-12 and a
`referencing` registry over the document's `components`. Formats are checked too.

Two deliberate widenings, both documented in the design and the protocol reference:
- `TimebackActivityContext.subject` accepts the SDK's ten Caliper subjects (the copy has six);
- a `uri` may contain literal spaces: the SDK leaves a grade subject unencoded in `object.id`
  (`.../activities/Social Studies/g5/...`, protocol §2.3), so spaces are read as `%20`.

Import it as ``from tests.schema import validate_envelope``.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker, ValidationError
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from timeback_nb.validation import CALIPER_SUBJECTS

# Copies of ../shared/reference/ (Timeback's published Caliper API and the protocol reference),
# so the tests run from any clone.
OPENAPI_PATH = Path(__file__).resolve().parent / "fixtures/reference/caliper-api.openapi.yaml"
PROTOCOL_PATH = OPENAPI_PATH.with_name("timeback-protocol.md")
_DOC_URI = "urn:timeback:caliper-api"

_EVENT_SCHEMAS = {
    "TimeSpentEvent": "TimebackTimeSpentEvent",
    "ActivityEvent": "TimebackActivityEvent",
}


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document with the subject enum widened to the SDK's ten subjects."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with OPENAPI_PATH.open(encoding="utf-8") as handle:
        document = yaml.load(handle, Loader=loader)
    document = copy.deepcopy(document)  # yaml anchors share objects; edit a private copy
    subject = document["components"]["schemas"]["TimebackActivityContext"]["properties"]["subject"]
    subject["enum"] = list(CALIPER_SUBJECTS)
    return document


def _format_checker() -> FormatChecker:
    checker = FormatChecker()
    uri_check = checker.checkers["uri"][0]

    @checker.checks("uri", raises=checker.checkers["uri"][1])
    def _uri_with_spaces(instance: object) -> bool:
        if isinstance(instance, str):
            instance = instance.replace(" ", "%20")
        return uri_check(instance)

    return checker


@functools.lru_cache(maxsize=None)
def _validator(schema_name: str) -> Draft202012Validator:
    resource = Resource.from_contents(openapi_document(), default_specification=DRAFT202012)
    registry = Registry().with_resource(_DOC_URI, resource)
    schema = {"$ref": f"{_DOC_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(schema, registry=registry, format_checker=_format_checker())


def validate(instance: Any, schema_name: str) -> None:
    """Raise `jsonschema.ValidationError` (the most relevant one) unless `instance` is valid."""
    error = best_match(_validator(schema_name).iter_errors(instance))
    if error is not None:
        raise error


def validate_envelope(envelope: dict[str, Any]) -> None:
    """The envelope against `Envelope`, each event against its Timeback event schema."""
    validate(envelope, "Envelope")
    for event in envelope["data"]:
        name = _EVENT_SCHEMAS.get(event.get("type"))
        if name is None:
            raise ValidationError(
                f"event type {event.get('type')!r} is neither of {', '.join(_EVENT_SCHEMAS)}"
            )
        validate(event, name)


@functools.lru_cache(maxsize=1)
def _reference_json_blocks() -> tuple[str, ...]:
    text = PROTOCOL_PATH.read_text(encoding="utf-8")
    return tuple(block.split("```", 1)[0] for block in text.split("```json\n")[1:])


def reference_example(*must_contain: str) -> Any:
    """The one JSON example of the protocol reference whose text contains every given string.

    Tests take Timeback's documented examples (events, request bodies, config) from the
    reference itself rather than from a copy that could drift.
    """
    import json

    found = []
    for block in _reference_json_blocks():
        if all(needle in block for needle in must_contain):
            try:
                found.append(json.loads(block))
            except json.JSONDecodeError:
                continue  # illustrative fragments such as {"...": "..."}
    if len(found) != 1:
        raise LookupError(f"{len(found)} reference examples contain {must_contain!r}")
    return found[0]
