"""Atomic artefact I/O: every file appears complete or not at all (temp file + fsync + rename).

A SIGKILL can land anywhere; because readers only ever see renamed files, a re-run can trust every
file it finds and redo only what is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


class InputError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""


def dumps(obj: Any) -> str:
    """Canonical JSON: sorted keys and fixed separators, so equal data give equal bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(dumps(obj).encode("utf-8")).hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=indent)
    _atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def write_jsonl(path: Path, rows: Iterable[Any]) -> int:
    lines = [dumps(r) for r in rows]
    _atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))
    return len(lines)


def write_parquet(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    _atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yields (line number, object); blank lines are skipped, a malformed one raises InputError."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: malformed JSON line: {e.msg} "
                                 f"(column {e.colno})") from None


def clean_stale_temps(directory: Path) -> None:
    """Removes temp files a killed run left behind (they are never read, only untidy)."""
    directory = Path(directory)
    if directory.is_dir():
        for tmp in directory.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
