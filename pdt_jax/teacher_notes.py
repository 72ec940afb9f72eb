"""Teacher-note embeddings (ARCHITECTURE.md D6), computed once per dataset and trunk, cached on disk.

Every record carries its teacher notes as text, ``notes_text[S][K]`` (snapshot 0 = the plan
contract, then the notes revealed as each stream's text advances). The frozen trunk turns each into
a notes-space vector with the seed-text recipe (``model.text_vectors``: mean of the final hidden
states over the text's tokens, cut or padded to ``notes_dim``, L2-normalised; an empty note is
zeros), so a record gets ``teacher_notes [S, K, N]``. Which snapshot a block of τ tokens reads is
the trainer's mapping: ``snapshot_of_blocks`` (the latest snapshot whose cursor the block has
reached); ``block_teacher_notes`` applies it to give a record's ``teacher_notes [K, U, N]``.

The cache is keyed by everything the vectors depend on — the trunk (its config and a digest of its
parameters), the tokenizer, the dataset (its export metadata and Parquet files) and ``notes_dim``:

    <cache_dir>/<key>/<split>.npz     example_ids [R], shapes [R, 2] (S, K), offsets [R + 1],
                                      embeddings [sum S·K, N] float32
    <cache_dir>/<key>/key.json        what the key was made of

Each split file is written atomically, so a killed build resumes with the splits it lacks.

    python -m pdt_jax.teacher_notes --config=configs/model/pdt.py:tiny --export=runs/data/x/export \\
        --cache=runs/teacher_notes [--checkpoint=DIR] [--tokenizer=PATH]
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pdt_jax import records as R
from pdt_jax.model import text_vectors
from pdt_jax.trunk.params import path_str

BUCKETS = (64, 256, 1024, 4096)   # token lengths a batch is padded to (one compile each)
TOKENS_PER_BATCH = 8192           # a batch of width w holds TOKENS_PER_BATCH // w texts


def trunk_digest(params) -> str:
    """A digest of a trunk's parameters: every leaf's path, shape, dtype and up to 1 MiB of its
    values taken at evenly spaced places, picked where the leaf lives (a sharded 20B trunk is
    never gathered onto the host)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = np.dtype(leaf.dtype)
        step = max(1, int(np.prod(leaf.shape)) // max(1, (1 << 20) // dtype.itemsize))
        sample = _sample(leaf, step) if isinstance(leaf, jax.Array) else np.asarray(leaf).reshape(-1)[::step]
        h.update(f"{path_str(path)}|{tuple(leaf.shape)}|{dtype}".encode())
        h.update(np.ascontiguousarray(np.asarray(sample)).tobytes())
    return h.hexdigest()


@functools.partial(jax.jit, static_argnums=1)
def _sample(x, step: int):
    return x.reshape(-1)[::step]


def data_fingerprint(export_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ["metadata.json"] + [f"{s}.parquet" for s in R.SPLITS]:
        h.update(name.encode())
        with open(Path(export_dir) / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _program(trunk_cfg, notes_dim: int):
    return jax.jit(functools.partial(text_vectors, trunk_cfg=trunk_cfg, notes_dim=notes_dim))


def embed_texts(trunk_params, trunk_cfg, tokenizer, texts: Sequence[str], notes_dim: int,
                tokens_per_batch: int = TOKENS_PER_BATCH) -> np.ndarray:
    """[len(texts), notes_dim] float32. Texts are grouped by length bucket; a text longer than the
    largest bucket (4096 tokens) keeps its first 4096 tokens."""
    ids = [tokenizer.encode(t)[:BUCKETS[-1]] for t in texts]
    out = np.zeros((len(texts), notes_dim), np.float32)
    program = _program(trunk_cfg, notes_dim)
    by_width: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_width.setdefault(next(b for b in BUCKETS if b >= max(1, len(x))), []).append(i)
    for width, members in sorted(by_width.items()):
        rows_per_batch = max(1, tokens_per_batch // width)
        for at in range(0, len(members), rows_per_batch):
            rows = members[at:at + rows_per_batch]
            batch = np.full((rows_per_batch, width), tokenizer.pad_id, np.int32)
            lengths = np.zeros(rows_per_batch, np.int32)
            for j, i in enumerate(rows):
                batch[j, :len(ids[i])], lengths[j] = ids[i], len(ids[i])
            out[rows] = np.asarray(program(trunk_params, jnp.asarray(batch), jnp.asarray(lengths)))[:len(rows)]
    return out


def snapshot_of_blocks(snapshot_cursor: Sequence[Sequence[int]], block_ranges: Sequence[tuple[int, int]],
                       stream: int) -> list[int]:
    """For each block (character range in the stream's text), the snapshot the teacher had written
    by the block's end: the latest s whose cursor for ``stream`` is at or before it (0 = contract)."""
    cursors = [row[stream] for row in snapshot_cursor]
    return [max(s for s, c in enumerate(cursors) if s == 0 or c <= end) for _, end in block_ranges]


def block_teacher_notes(record, notes: np.ndarray, token_spans: Sequence[Sequence[Sequence[int]]],
                        tau: int) -> np.ndarray:
    """A record's teacher notes per block of τ tokens, ``[K, U, N]`` (U = the longest stream's block
    count; rows past a stream's last block are zeros): block u of stream k gets stream k's note of
    the snapshot its teacher had written by the block's end (``snapshot_of_blocks``).
    ``notes`` is the record's ``[S, K, N]`` from :func:`load`; ``token_spans[k]`` the (start, end)
    characters of each target token of stream k, as for ``records.block_labels``."""
    K = len(record["stream_ids"])
    ranges = [R.block_char_ranges(token_spans[k], tau, len(record["target_text"][k])) for k in range(K)]
    out = np.zeros((K, max((len(r) for r in ranges), default=0), notes.shape[-1]), np.float32)
    for k, blocks in enumerate(ranges):
        for u, s in enumerate(snapshot_of_blocks(record["snapshot_cursor"], blocks, k)):
            out[k, u] = notes[s, k]
    return out


def cache_key(trunk_params, trunk_cfg, tokenizer, export_dir: Path, notes_dim: int) -> dict[str, Any]:
    return {"trunk_config": trunk_cfg.to_mapping(), "trunk_digest": trunk_digest(trunk_params),
            "tokenizer": tokenizer.source, "tokenizer_vocab_size": tokenizer.vocab_size,
            "data": data_fingerprint(export_dir), "notes_dim": int(notes_dim),
            "recipe": "model.text_vectors/1"}


def build(trunk_params, trunk_cfg, tokenizer, export_dir, cache_dir, notes_dim: int,
          tokens_per_batch: int = TOKENS_PER_BATCH, log=sys.stderr) -> Path:
    """Embeds every record's notes (the splits not cached yet); returns the cache's directory."""
    export_dir = Path(export_dir)
    key = cache_key(trunk_params, trunk_cfg, tokenizer, export_dir, notes_dim)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    out = Path(cache_dir) / digest
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / "key.json", json.dumps(key, indent=1, sort_keys=True).encode())
    for split in R.SPLITS:
        target = out / f"{split}.npz"
        if target.exists():
            continue
        rows = R.read_records(export_dir / f"{split}.parquet").to_pylist()
        texts, offsets, ids, shapes = [], [0], [], []
        for rec in rows:
            texts += [t for snapshot in rec["notes_text"] for t in snapshot]
            offsets.append(len(texts))
            ids.append(rec["example_id"])
            shapes.append((len(rec["notes_text"]), len(rec["stream_ids"])))
        emb = embed_texts(trunk_params, trunk_cfg, tokenizer, texts, notes_dim, tokens_per_batch)
        with tempfile.NamedTemporaryFile(dir=out, suffix=".npz", delete=False) as f:
            np.savez(f, example_ids=np.asarray(ids, dtype=str), shapes=np.asarray(shapes, np.int64).reshape(-1, 2),
                     offsets=np.asarray(offsets, np.int64), embeddings=emb)
        os.replace(f.name, target)
        if log is not None:
            print(f"teacher notes: {split}: {len(rows)} records, {len(texts)} notes -> {target}", file=log)
    return out


def load(cache: Path, split: str) -> dict[str, np.ndarray]:
    """{example_id: teacher notes [S, K, N]} of one split."""
    path = Path(cache) / f"{split}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, shapes, offsets, emb = z["example_ids"], z["shapes"], z["offsets"], z["embeddings"]
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a teacher-notes cache file ({e})") from None
    return {str(ex): emb[offsets[i]:offsets[i + 1]].reshape(int(shapes[i][0]), int(shapes[i][1]), -1)
            for i, ex in enumerate(ids)}


def main(argv=None) -> int:
    from absl import flags
    from ml_collections import config_flags

    from pdt_jax import config_files
    from pdt_jax.tokenizer import Tokenizer
    from pdt_jax.trunk import Trunk

    argv = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "model config (trunk + sidecar notes_dim)", flag_values=fv,
                                    sys_argv=argv)
    flags.DEFINE_string("export", None, "the dataset's export directory", flag_values=fv)
    flags.DEFINE_string("cache", "runs/teacher_notes", "cache directory", flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "trunk checkpoint (HF or converted)", flag_values=fv)
    flags.DEFINE_bool("random_trunk", False, "embed with the config's trunk at random weights (seed 0) instead "
                      "of a checkpoint: for trying the pipeline on tiny configs only", flag_values=fv)
    flags.DEFINE_string("tokenizer", "auto", "tokenizer.json, or auto: the checkpoint's (the tiny BPE for tiny "
                      "models)", flag_values=fv)
    flags.DEFINE_integer("tokens_per_batch", TOKENS_PER_BATCH, "tokens per batch (texts x bucket width)",
                         flag_values=fv)
    try:
        fv(argv)
        if fv.config is None or not fv.export:
            raise ValueError("--config and --export are required")
        cfg = config_files.pdt_config(fv.config)
        if bool(fv.checkpoint) == bool(fv.random_trunk):
            raise ValueError("give exactly one of --checkpoint DIR or --random_trunk")
        trunk = Trunk.from_pretrained(fv.checkpoint) if fv.checkpoint else Trunk.random(cfg.trunk, seed=0)
        tokenizer = Tokenizer.for_model(fv.tokenizer, fv.checkpoint, trunk.cfg.vocab_size)
        out = build(trunk.params, trunk.cfg, tokenizer, Path(fv.export), Path(fv.cache), cfg.sidecar.notes_dim,
                    fv.tokens_per_batch)
    except (ValueError, FileNotFoundError, flags.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _atomic(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
        f.write(data)
    os.replace(f.name, path)


if __name__ == "__main__":
    sys.exit(main())
