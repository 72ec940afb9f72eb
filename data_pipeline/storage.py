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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; an artefact gets the mode a plain open() would give it.
_FILE_MODE = 0o666 & ~_umask()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)
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
    """Yields (line number, object); blank lines are skipped, a malformed one — not UTF-8, not
    JSON — raises InputError naming the file, the line and the column."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
                                 ) from None
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
