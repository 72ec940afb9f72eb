"""Source documents: JSONL or Parquet files of ``{doc_id, title, sections: [{heading, text}]}``.

A bad row stops the run with its file and line (JSONL) or row index (Parquet): silently skipping
input would change the dataset without anyone noticing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq

from data_pipeline import schemas
from data_pipeline.storage import InputError, iter_jsonl


def _checked(doc: Any, where: str) -> dict[str, Any]:
    try:
        schemas.validate(doc, schemas.DOCUMENT, "document")
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None
    return {"doc_id": str(doc["doc_id"]), "title": doc["title"],
            "sections": [{"heading": s["heading"], "text": s["text"]} for s in doc["sections"]]}


def iter_documents(paths: list[str]) -> Iterator[dict[str, Any]]:
    """Documents of every path in order; format chosen by suffix (.jsonl/.json lines or .parquet)."""
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path}: source file does not exist")
        if path.suffix == ".parquet":
            try:
                rows = pq.read_table(path).to_pylist()
            except Exception as e:  # pyarrow raises several types for corrupt files
                raise InputError(f"{path}: unreadable Parquet: {e}") from None
            for i, row in enumerate(rows):
                yield _checked(row, f"{path}: row {i}")
        elif path.suffix in (".jsonl", ".json", ".ndjson"):
            for lineno, obj in iter_jsonl(path):
                yield _checked(obj, f"{path}:{lineno}")
        else:
            raise InputError(f"{path}: unknown source format (use .jsonl or .parquet)")


def document_text(doc: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    """The document as one string (sections in order) and each section's [start, end) in it.

    Each section is rendered as ``"<heading>\\n<text>\\n\\n"``, so any contiguous run of sections is
    a substring: a stream's target text is exactly a slice of the document (records rely on it).
    """
    parts, spans, pos = [], [], 0
    for sec in doc["sections"]:
        block = f"{sec['heading']}\n{sec['text']}\n\n" if sec["heading"] else f"{sec['text']}\n\n"
        parts.append(block)
        spans.append((pos, pos + len(block)))
        pos += len(block)
    return "".join(parts), spans
