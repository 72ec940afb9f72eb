"""The dataset config, checked before any stage runs (and before the teacher is paid for anything):
every field must be one the pipeline knows (``configs/data/defaults.py``: a misspelt field would
otherwise be ignored and its default used), and every value must make sense.
"""
from __future__ import annotations

from pathlib import Path

from configs.data.defaults import base_config


class DataConfigError(ValueError):
    """A dataset config field is unknown or has an invalid value (the message names it)."""


def _unknown_fields(config, schema, prefix: str = "") -> list[str]:
    out = []
    for key in config.keys():
        path = f"{prefix}{key}"
        if key not in schema:
            out.append(path)
        elif hasattr(schema[key], "keys") and hasattr(config[key], "keys"):
            out += _unknown_fields(config[key], schema[key], path + ".")
    return out


def _valid_fields(schema, dotted: str) -> list[str]:
    node = schema
    for part in dotted.split(".")[:-1]:
        node = node[part] if part in node else {}
    return sorted(node.keys()) if hasattr(node, "keys") else []


def validate(config) -> None:
    """Raises DataConfigError naming the first unknown field or invalid value."""
    schema = base_config()
    unknown = _unknown_fields(config, schema)
    if unknown:
        raise DataConfigError(f"dataset config: unknown field '{unknown[0]}'"
                              + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
                              + f"; valid fields there: {_valid_fields(schema, unknown[0])}")

    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            raise DataConfigError(f"dataset config field '{field}': expected {expected}, found {value!r}")

    def positive_int(field: str, minimum: int = 1) -> None:
        value = config
        for part in field.split("."):
            value = value[part]
        need(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, field,
             f"an integer >= {minimum}")

    positive_int("num_streams")
    positive_int("preflight.min_sections")
    positive_int("teacher.concurrency")
    positive_int("plans.max_plan_items")
    positive_int("plans.max_entities")
    positive_int("notes.max_entities")
    positive_int("notes.max_facts")
    positive_int("notes.num_blocks")
    positive_int("notes.lag", 0)
    positive_int("notes.speculative_variants", 0)
    positive_int("export.plan_vocab_size", 2)
    positive_int("export.plan_hash_buckets", 2)
    need(config.preflight.min_chars <= config.preflight.max_chars, "preflight.min_chars",
         f"<= preflight.max_chars ({config.preflight.max_chars})")
    for field in ("notes.drop_fact", "notes.swap_object"):
        part, name = field.split(".")
        need(0.0 <= float(config[part][name]) <= 1.0, field, "a probability in [0, 1]")
    fractions = tuple(config.collate.fractions)
    need(len(fractions) == 3 and all(isinstance(f, (int, float)) and f >= 0 for f in fractions)
         and abs(sum(fractions) - 1.0) <= 1e-6, "collate.fractions",
         "3 non-negative numbers (train, validation, test) summing to 1")
    need(config.plans.lint in ("fail", "warn"), "plans.lint", "'fail' or 'warn'")
    need(config.teacher.kind in ("procedural", "openai"), "teacher.kind", "'procedural' or 'openai'")
    need(config.source.kind in ("synthetic", "coordination", "files"), "source.kind",
         "'synthetic', 'coordination' or 'files'")
    if config.source.kind == "coordination":
        need(int(config.num_streams) == 3, "num_streams", "3 for source.kind 'coordination' (one stream per part)")
    if config.source.kind in ("synthetic", "coordination"):
        positive_int("source.num_documents")
    else:
        paths = [p for p in str(config.source.paths).split(",") if p.strip()]
        need(bool(paths), "source.paths", "comma-separated .jsonl / .parquet paths")
        for p in paths:
            need(Path(p.strip()).is_file(), "source.paths", f"existing files ({p.strip()!r} does not exist)")
    if config.teacher.kind == "openai":
        o = config.teacher.openai
        for field in ("timeout_s", "backoff_base_s", "backoff_max_s", "retry_after_max_s"):
            need(float(o[field]) > 0, f"teacher.openai.{field}", "a positive number of seconds")
        for field in ("concurrency", "max_tokens", "max_response_bytes"):
            positive_int(f"teacher.openai.{field}")
        for field in ("max_retries", "max_invalid_retries"):
            positive_int(f"teacher.openai.{field}", 0)
        need(0.0 <= float(o.jitter) < 1.0, "teacher.openai.jitter", "a fraction in [0, 1)")
    if config.preflight.llm_classifier:
        need(config.teacher.kind == "openai", "preflight.llm_classifier", "False unless teacher.kind is 'openai'")
