"""Teacher-note embeddings (D6) with the frozen trunk, cached per dataset and trunk."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import pipeline
from pdt_jax import config_files, records as R, teacher_notes
from pdt_jax.model import text_vectors
from pdt_jax.tokenizer import Tokenizer
from pdt_jax.trunk import Trunk
from tests.data_pipeline.conftest import procedural_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("tn")
    pipeline.run(procedural_config(work, 3), log=None)
    cfg = config_files.pdt_config(config_files.load("configs/model/pdt.py:tiny"))
    trunk, tok = Trunk.random(cfg.trunk, seed=0, init_std=0.1), Tokenizer.tiny()
    cache = teacher_notes.build(trunk.params, trunk.cfg, tok, work / "export", work / "cache", cfg.sidecar.notes_dim,
                                tokens_per_batch=2048, log=None)
    return work / "export", cfg, trunk, tok, cache


def test_cached_embeddings_are_the_trunks_text_vectors(setup):
    export, cfg, trunk, tok, cache = setup
    N = cfg.sidecar.notes_dim
    rec = R.read_records(export / "train.parquet").to_pylist()[0]
    notes = teacher_notes.load(cache, "train")[rec["example_id"]]
    S, K = len(rec["notes_text"]), len(rec["stream_ids"])
    assert notes.shape == (S, K, N)
    for s in range(S):                       # an empty note is zeros; every other one a unit vector
        for k in range(K):
            if tok.encode(rec["notes_text"][s][k]):
                assert abs(np.linalg.norm(notes[s, k]) - 1) < 1e-4
            else:
                assert not notes[s, k].any()
    assert len({tuple(np.round(v, 4)) for v in notes.reshape(-1, N) if v.any()}) > 1  # not one vector
    # three notes of different lengths against the recipe run on its own: another batch, padded to
    # the longest of the three rather than to a bucket
    picked = sorted({(len(tok.encode(rec["notes_text"][s][k])), s, k) for s in range(S) for k in range(K)
                     if tok.encode(rec["notes_text"][s][k])})
    picked = [picked[0], picked[len(picked) // 2], picked[-1]]
    batch = np.zeros((3, picked[-1][0]), np.int32)
    for row, (n, s, k) in enumerate(picked):
        batch[row, :n] = tok.encode(rec["notes_text"][s][k])
    reference = jax.jit(functools.partial(text_vectors, trunk_cfg=trunk.cfg, notes_dim=N))
    want = np.asarray(reference(trunk.params, jnp.asarray(batch), jnp.asarray([n for n, _, _ in picked])))
    np.testing.assert_allclose(np.stack([notes[s, k] for _, s, k in picked]), want, atol=2e-5)


def test_the_cache_is_keyed_by_trunk_and_resumes_a_missing_split(setup):
    export, cfg, trunk, tok, cache = setup
    N = cfg.sidecar.notes_dim
    key = teacher_notes.cache_key(trunk.params, trunk.cfg, tok, export, N)
    assert json.loads((cache / "key.json").read_text()) == key
    other = Trunk.random(cfg.trunk, seed=1, init_std=0.1)
    assert teacher_notes.cache_key(other.params, other.cfg, tok, export, N)["trunk_digest"] != key["trunk_digest"]
    assert teacher_notes.cache_key(trunk.params, trunk.cfg, tok, export, N + 1) != key
    kept = {s: (cache / f"{s}.npz").stat().st_mtime_ns for s in ("validation", "test")}
    want = teacher_notes.load(cache, "train")
    (cache / "train.npz").unlink()                                  # as a kill leaves it
    assert teacher_notes.build(trunk.params, trunk.cfg, tok, export, cache.parent, N, tokens_per_batch=2048,
                               log=None) == cache
    assert {s: (cache / f"{s}.npz").stat().st_mtime_ns for s in kept} == kept     # only train was redone
    got = teacher_notes.load(cache, "train")
    assert got.keys() == want.keys() and all(np.array_equal(got[i], want[i]) for i in want)


def test_blocks_read_the_snapshot_their_teacher_had_written():
    cursors = [[0, 0], [10, 5], [20, 9], [30, 12]]          # snapshots 0..3, two streams
    assert teacher_notes.snapshot_of_blocks(cursors, [(0, 4), (4, 12), (12, 19), (19, 25), (25, 31)], 0) \
        == [0, 1, 1, 2, 3]
    assert teacher_notes.snapshot_of_blocks(cursors, [(0, 6), (6, 13)], 1) == [1, 3]


def test_block_teacher_notes_follow_the_token_blocks():
    S, K, N = 3, 2, 4
    notes = np.arange(S * K * N, dtype=np.float32).reshape(S, K, N) + 1
    record = {"stream_ids": [0, 1], "target_text": ["a" * 12, "b" * 6],
              "snapshot_cursor": [[0, 0], [5, 3], [12, 6]]}
    spans = [[(i, i + 1) for i in range(12)], [(i, i + 1) for i in range(6)]]   # one character per token
    got = teacher_notes.block_teacher_notes(record, notes, spans, tau=4)        # blocks end 4, 8, 12 | 4, 6
    assert got.shape == (K, 3, N)
    np.testing.assert_array_equal(got[0], notes[[0, 1, 2], 0])
    np.testing.assert_array_equal(got[1, :2], notes[[1, 2], 1])
    assert not got[1, 2].any()                                                  # stream 1 has two blocks


def test_the_command_line_needs_a_trunk_on_purpose(tmp_path, capsys):
    pipeline.run(procedural_config(tmp_path, 1), log=None)                 # one document: one record
    export = tmp_path / "export"
    base = ["--config=configs/model/pdt.py:tiny", f"--export={export}", f"--cache={tmp_path / 'cache'}"]
    assert teacher_notes.main(base) == 2 and "exactly one of --checkpoint" in capsys.readouterr().err
    assert teacher_notes.main(base + ["--random_trunk", "--tokens_per_batch=2048"]) == 0
    cache = Path(capsys.readouterr().out.strip())
    ids = {s: set(teacher_notes.load(cache, s)) for s in R.SPLITS}
    assert ids == {s: {r["example_id"] for r in R.read_records(export / f"{s}.parquet").to_pylist()}
                   for s in R.SPLITS}
    assert sum(map(len, ids.values())) == 1
