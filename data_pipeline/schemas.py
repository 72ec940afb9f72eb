"""JSON schemas for every artefact and every teacher answer (Draft 2020-12, validated by jsonschema).

Stored artefacts: source document, plan (``plan/1.0``), notes (schema 2.0). Teacher answers: the plan
answer, one stream's notes answer and the preflight quality verdict; the openai teacher sends these
as ``response_format`` json_schema and validates what comes back against them.
"""
from __future__ import annotations

from typing import Any

import jsonschema

from pdt_jax.records import NOTES_SCHEMA_VERSION

PLAN_SCHEMA_VERSION = "plan/1.0"
STREAM_ID = {"type": "string", "pattern": "^stream_[1-9][0-9]*$"}
_STR = {"type": "string", "minLength": 1}
_STR_LIST = {"type": "array", "items": _STR}
_STATUS = {"enum": ["covered", "partial", "missing"]}

DOCUMENT = {
    "type": "object",
    "required": ["doc_id", "title", "sections"],
    "properties": {
        "doc_id": _STR,
        "title": _STR,
        "sections": {
            "type": "array", "minItems": 1,
            "items": {"type": "object", "required": ["heading", "text"],
                      "properties": {"heading": {"type": "string"}, "text": {"type": "string"}}},
        },
    },
}

SECTION_CONTRACT = {
    "type": "object", "additionalProperties": False,
    "required": ["type", "start", "end"],
    "properties": {"type": {"const": "section_index_range"},
                   "start": {"type": "integer", "minimum": 0},
                   "end": {"type": "integer", "minimum": 1}},
}

PLAN = {
    "type": "object",
    "required": ["schema_version", "sample_id", "title", "prompt", "num_streams",
                 "sectional_independence", "teacher", "streams", "catalog"],
    "properties": {
        "schema_version": {"const": PLAN_SCHEMA_VERSION},
        "sample_id": _STR, "title": _STR, "prompt": _STR, "teacher": _STR,
        "num_streams": {"type": "integer", "minimum": 1},
        "sectional_independence": {"type": "boolean"},
        "streams": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False,
            "required": ["stream_id", "header", "summary", "entities", "plan_items",
                         "notes_contract", "section_contract"],
            "properties": {
                "stream_id": STREAM_ID, "header": _STR, "summary": _STR,
                "entities": _STR_LIST,
                "plan_items": {**_STR_LIST, "minItems": 1},
                "notes_contract": {**_STR_LIST, "minItems": 2},
                "section_contract": SECTION_CONTRACT,
            }}},
        "catalog": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["text", "stream_id"],
            "properties": {"text": _STR, "stream_id": STREAM_ID}}},
    },
}

STREAM_NOTES = {
    "type": "object", "additionalProperties": False,
    "required": ["stream_id", "ENT", "FACT", "COVERAGE"],
    "properties": {
        "stream_id": STREAM_ID,
        "ENT": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "name", "aliases", "type", "canonical"],
            "properties": {"id": _STR, "name": _STR, "aliases": _STR_LIST, "type": _STR,
                           "canonical": {"type": "boolean"}}}},
        "FACT": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["subj_id", "predicate", "object", "certainty", "evidence_span"],
            "properties": {
                "subj_id": _STR, "predicate": _STR, "object": _STR,
                "certainty": {"type": "number", "minimum": 0, "maximum": 1},
                "evidence_span": {
                    "type": "object", "additionalProperties": False,
                    "required": ["start", "end", "text"],
                    "properties": {"start": {"type": "integer", "minimum": 0},
                                   "end": {"type": "integer", "minimum": 0}, "text": _STR}}}}},
        "COVERAGE": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["plan_item_id", "status"],
            "properties": {"plan_item_id": _STR, "status": _STATUS}}},
    },
}

_NOTES_BY_STREAM = {"type": "object", "minProperties": 1,
                    "propertyNames": STREAM_ID, "additionalProperties": STREAM_NOTES}

NOTES = {
    "type": "object",
    "required": ["schema_version", "document_id", "teacher", "true_notes", "speculative_notes",
                 "versioned_notes", "coverage_provenance", "sectional_independence", "lag",
                 "readiness", "qc"],
    "properties": {
        "schema_version": {"const": NOTES_SCHEMA_VERSION},
        "document_id": _STR, "teacher": _STR,
        "true_notes": _NOTES_BY_STREAM,
        "speculative_notes": {"type": "array", "items": {
            "type": "object", "required": ["variant_id", "noise", "notes"],
            "properties": {"variant_id": {"type": "integer", "minimum": 0},
                           "noise": {"type": "object"}, "notes": _NOTES_BY_STREAM}}},
        "versioned_notes": {"type": "array", "minItems": 2, "items": {
            "type": "object", "required": ["snapshot_id", "source", "cursor", "notes"],
            "properties": {"snapshot_id": {"type": "integer", "minimum": 0},
                           "source": {"enum": ["plan_contract", "teacher_true"]},
                           "cursor": {"type": "object",
                                      "additionalProperties": {"type": "integer", "minimum": 0}},
                           "notes": _NOTES_BY_STREAM}}},
        "coverage_provenance": {
            "type": "object", "additionalProperties": False,
            "required": ["method", "schema_version", "strength", "confirmed_plan_items"],
            "properties": {"method": _STR, "schema_version": {"const": NOTES_SCHEMA_VERSION},
                           "strength": {"enum": ["confirmed", "hint"]},
                           "confirmed_plan_items": _STR_LIST}},
        "sectional_independence": {"type": "boolean"},
        "lag": {"type": "integer", "minimum": 0},
        "readiness": {"type": "object", "additionalProperties": {
            "type": "array", "items": {"enum": [0, 1]}}},
        "qc": {"type": "object"},
    },
}

# ---- teacher answers (what an LLM must return) ----

def plan_answer_schema(num_streams: int) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False, "required": ["streams"],
        "properties": {"streams": {
            "type": "array", "minItems": num_streams, "maxItems": num_streams,
            "items": {
                "type": "object", "additionalProperties": False,
                "required": ["header", "summary", "entities", "plan_items", "notes_contract",
                             "section_start", "section_end"],
                "properties": {
                    "header": _STR, "summary": _STR, "entities": _STR_LIST,
                    "plan_items": {**_STR_LIST, "minItems": 1, "maxItems": 8},
                    "notes_contract": {**_STR_LIST, "minItems": 2},
                    "section_start": {"type": "integer", "minimum": 0},
                    "section_end": {"type": "integer", "minimum": 1},
                }}}},
    }


NOTES_ANSWER = {
    "type": "object", "additionalProperties": False,
    "required": ["entities", "facts", "coverage"],
    "properties": {
        "entities": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "name", "type", "aliases"],
            "properties": {"id": _STR, "name": _STR, "type": _STR, "aliases": _STR_LIST}}},
        "facts": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["subj_id", "predicate", "object", "certainty", "evidence"],
            "properties": {"subj_id": _STR, "predicate": _STR, "object": _STR,
                           "certainty": {"type": "number", "minimum": 0, "maximum": 1},
                           "evidence": _STR}}},
        "coverage": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["plan_item", "status"],
            "properties": {"plan_item": _STR, "status": _STATUS}}},
    },
}

QUALITY_ANSWER = {
    "type": "object", "additionalProperties": False, "required": ["keep", "reason"],
    "properties": {"keep": {"type": "boolean"}, "reason": {"type": "string"}},
}


def validate(instance: Any, schema: dict[str, Any], what: str) -> None:
    """Raises ValueError with the first violation's path, e.g. ``plan: streams/1/plan_items: ...``."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise ValueError(f"{what}: {where}: {err.message[:300]}")
