"""safetensors files read and written in bounded host memory.

Why not ``safetensors.safe_open``: it memory-maps the file, and every page a conversion touches stays
resident (and counted in the process's RSS) until the file is closed — for a 13 GB shard that is the
whole shard. Here the header is parsed and checked once, and tensors (or runs of leading-axis rows
of them) are read with ``readinto`` into a fresh buffer, so memory is what the caller holds.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data; offsets are relative to the end of the header.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct

import ml_dtypes
import numpy as np

from pdt_jax.trunk.hf_layout import CheckpointError

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 << 20


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    file: str
    name: str
    dtype: str  # safetensors spelling: F32, BF16, U8, ...
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]


def read_header(path: str) -> dict[str, TensorInfo]:
    """Parses and checks a file's header: every tensor's dtype, shape and byte range must be
    consistent and lie inside the file (a truncated file fails here, before any data is read)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file: expected an 8-byte header length, "
                                      f"found a {size}-byte file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: not a safetensors file: expected an 8-byte header length "
                                      f"that fits in the file, found {n} in a {size}-byte file")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: could not read the file ({e})") from e
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors file: expected a JSON header, found bytes that "
                              f"do not parse ({e})") from e
    base = 8 + n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (TypeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor '{name}': malformed header entry {entry!r}") from e
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}' has dtype {dtype}, expected one of {sorted(DTYPES)}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        if end - begin != nbytes:
            raise CheckpointError(f"{path}: tensor '{name}' of shape {shape} {dtype} needs {nbytes} bytes, "
                                  f"found a data range of {end - begin}")
        if base + end > size:
            raise CheckpointError(f"{path}: tensor '{name}' ends at byte {base + end}, expected it inside the "
                                  f"file, found a {size}-byte file (truncated?)")
        out[name] = TensorInfo(path, name, dtype, shape, base + begin, nbytes)
    return out


def read(info: TensorInfo, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """The tensor, or its rows [start, stop) along axis 0 (contiguous in the file)."""
    shape = info.shape
    if start is not None:
        row = info.nbytes // shape[0] if shape and shape[0] else 0
        offset, shape = info.offset + start * row, (stop - start,) + shape[1:]
    else:
        offset = info.offset
    out = np.empty(shape, info.np_dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    try:
        with open(info.file, "rb") as f:
            f.seek(offset)
            got = f.readinto(view)
    except OSError as e:
        raise CheckpointError(f"{info.file}: tensor '{info.name}' could not be read ({e})") from e
    if got != out.nbytes:
        raise CheckpointError(f"{info.file}: tensor '{info.name}': expected {out.nbytes} bytes, found {got} "
                              f"(truncated file?)")
    return out


class Writer:
    """Writes tensors one at a time into files of at most ``max_shard_bytes`` each. The caller
    declares every (name, shape, dtype) first, so headers are final before any data is written.

        w = Writer(dir, [("a", (2, 3), np.float32), ...]); w.put("a", array); ...; w.close()

    One file is ``model.safetensors``; several are ``model-0000i-of-0000n.safetensors`` with a
    ``model.safetensors.index.json`` (the Hugging Face convention)."""

    def __init__(self, directory: str, entries, max_shard_bytes: int = 5 << 30, basename: str = "model",
                 metadata: dict | None = None):
        shards, current, size = [], [], 0
        for name, shape, dtype in entries:
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append((name, tuple(shape), np.dtype(dtype), nbytes))
            size += nbytes
        shards.append(current)
        n = len(shards)
        names = ([f"{basename}.safetensors"] if n == 1 else
                 [f"{basename}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self.where: dict[str, tuple[str, int, int, tuple, np.dtype]] = {}
        self.written: set[str] = set()
        self.files = [os.path.join(directory, f) for f in names]
        for path, shard in zip(self.files, shards):
            header, pos = {"__metadata__": dict(metadata or {"format": "pt"})}, 0
            for name, shape, dtype, nbytes in shard:
                header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
                pos += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            with open(path, "wb") as f:
                f.write(struct.pack("<Q", len(raw)) + raw)
                f.truncate(8 + len(raw) + pos)
            for name, shape, dtype, nbytes in shard:
                begin = header[name]["data_offsets"][0]
                self.where[name] = (path, 8 + len(raw) + begin, nbytes, shape, dtype)
        if n > 1:
            total = sum(e[2] for e in self.where.values())
            index = {"metadata": {"total_size": total},
                     "weight_map": {name: os.path.basename(e[0]) for name, e in self.where.items()}}
            with open(os.path.join(directory, f"{basename}.safetensors.index.json"), "w") as f:
                json.dump(index, f, indent=1)

    def put(self, name: str, array: np.ndarray, start: int = 0) -> None:
        """Writes a tensor, or rows [start, start + len(array)) of it."""
        path, offset, nbytes, shape, dtype = self.where[name]
        rows_ok = (array.shape == shape if not shape else
                   array.shape[1:] == shape[1:] and array.ndim == len(shape) and start + array.shape[0] <= shape[0])
        if array.dtype != dtype or not rows_ok:
            raise CheckpointError(f"{path}: tensor '{name}': expected {shape} {dtype}, found "
                                  f"{tuple(array.shape)} {array.dtype} at row {start}")
        row = nbytes // shape[0] if shape and shape[0] else 0
        data = np.ascontiguousarray(array)
        with open(path, "r+b") as f:
            f.seek(offset + start * row)
            f.write(memoryview(data.reshape(-1).view(np.uint8)))
        self.written.add(name)

    def close(self) -> None:
        missing = sorted(set(self.where) - self.written)
        if missing:
            raise CheckpointError(f"{self.files[0]}: tensor(s) {missing[:5]} were declared but never written")
