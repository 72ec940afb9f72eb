"""The input rows and loss terms, checked against hand computations: KD teacher rows align with
the student token for token, LM CE scores the next token on supervised positions only, KD is the
tempered KL there, null planner slots and hint-provenance coverage items never count, and the
block labels reach the batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.data.synthetic import get_config as synthetic_config
from data_pipeline import pipeline
from pdt_jax import records as R
from pdt_jax.tokenizer import Tokenizer
from pdt_jax.train import data, losses


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    c = synthetic_config("tiny")
    c.work_dir = str(tmp_path_factory.mktemp("data"))
    c.progress = False
    c.export.plan_vocab_size = c.export.plan_hash_buckets = 1024
    pipeline.run(c, log=None)
    return R.read_records(f"{c.work_dir}/export/train.parquet").to_pylist()


SPEC = data.RowSpec(num_streams=3, block_size=4, lag=1, plan_slots=16, notes_dim=8, buckets=(128, 512), kd_context=24)


def test_kd_rows_align_with_the_student_token_for_token(records):
    tok = Tokenizer.tiny()
    batch = data.collate([data.Featurizer(SPEC, tok)(r) for r in records[:2]], SPEC)
    b = {k: v[0] for k, v in batch.items()}
    n = 0
    for p in range(2):
        for k in range(3):
            s, L = b["target_start"][p, k], b["lengths"][p, k]
            for t in range(s - 1, L - 1):
                i = b["kd_index"][p, k, t]
                assert b["kd_tokens"][p, k, i + 1] == b["tokens"][p, k, t + 1]   # same next token
                n += 1
            assert (b["kd_index"][p, k, :s - 1] == -1).all() and (b["kd_index"][p, k, L - 1:] == -1).all()
            # The teacher read document text before the target (stream 1's target starts the document).
            assert (b["kd_lengths"][p, k] - L > 0) == (k > 0)
    assert n > 100
    # Labels: the EOS is supervised, prompts never; blocks carry readiness and coverage labels.
    assert b["label_mask"][0, 0, b["lengths"][0, 0] - 1] and not b["label_mask"][0, 0, :b["target_start"][0, 0]].any()
    assert b["block_mask"].any() and 0 < b["readiness"][b["block_mask"]].mean() < 1
    assert set(np.unique(b["coverage"])) <= {0.0, 0.5, 1.0} and (b["coverage"] == 1.0).any()


def test_each_term_is_the_hand_computed_one():
    rng = np.random.default_rng(0)
    P, K, T, V, U, S, N = 1, 3, 10, 11, 3, 4, 5
    tokens = rng.integers(0, V, (P, K, T)).astype(np.int32)
    label = np.zeros((P, K, T), bool)
    label[..., 4:9] = True
    batch = {"tokens": tokens, "label_mask": label, "plan_ids": np.array([[5, 0, 7, 0]], np.int32),
             "block_mask": np.ones((P, K, U), bool), "teacher_notes": rng.normal(size=(P, K, U, N)).astype(np.float32),
             "coverage": rng.choice([0.0, 0.5, 1.0], (P, K, U, S)).astype(np.float32),
             "coverage_item_mask": np.array([[True, False, True, False]]), "readiness": np.ones((P, K, U), np.float32),
             # The teacher's positions: those that predict a supervised token (3..7), as collate sets them.
             "kd_index": np.where(np.roll(label, -1, axis=-1), np.arange(T), -1).astype(np.int32)}
    out = {"lm_logits": rng.normal(size=(P * K, T, V)).astype(np.float32),
           "planner_logits": rng.normal(size=(P, S, 9)).astype(np.float32),
           "notes": rng.normal(size=(P, K, U, N)).astype(np.float32),
           "speculative_notes": rng.normal(size=(P, K, U, N)).astype(np.float32),
           "block_present": np.ones((P, K, U), bool), "coverage_logits": rng.normal(size=(P, K, U, S)).astype(np.float32),
           "readiness_logits": rng.normal(size=(P, K, U)).astype(np.float32),
           "stream_logits": rng.normal(size=(P, K, K)).astype(np.float32)}
    kd = rng.normal(size=(P * K, T, V)).astype(np.float32)
    w = {t: 1.0 for t in losses.TERMS}
    _, terms = losses.compute(out, batch, w, kd_logits=kd, kd_temperature=2.0)
    logsm = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
    # LM: position t scores token t + 1 where the token at t + 1 is supervised (t = 3..7).
    lp = logsm(out["lm_logits"])
    want = np.mean([-lp[r, t, tokens.reshape(-1, T)[r, t + 1]] for r in range(3) for t in range(3, 8)])
    assert terms["lm"] == pytest.approx(want, rel=1e-5)
    tl, sl = logsm(kd / 2.0), logsm(out["lm_logits"] / 2.0)
    want = np.mean([4.0 * np.sum(np.exp(tl[r, t]) * (tl[r, t] - sl[r, t])) for r in range(3) for t in range(3, 8)])
    assert terms["kd"] == pytest.approx(want, rel=1e-5)
    pl = logsm(out["planner_logits"])
    assert terms["planner"] == pytest.approx(-(pl[0, 0, 5] + pl[0, 2, 7]) / 2, rel=1e-5)
    # Masked coverage items and null planner slots do not count: changing them changes nothing.
    out2 = dict(out, coverage_logits=out["coverage_logits"].copy(), planner_logits=out["planner_logits"].copy())
    out2["coverage_logits"][..., 1] += 5.0
    out2["planner_logits"][0, 1] += 5.0
    _, terms2 = losses.compute(out2, batch, w, kd_logits=kd, kd_temperature=2.0)
    assert terms2["coverage"] == terms["coverage"] and terms2["planner"] == terms["planner"]
    assert terms["notes"] == pytest.approx(np.mean((out["notes"] - batch["teacher_notes"]) ** 2), rel=1e-5)
    # A zero weight means the term is not computed at all.
    _, only = losses.compute(out, batch, {"lm": 1.0})
    assert set(only) == {"lm"}


def test_chunked_token_terms_equal_the_full_logits():
    """LM CE and KD from hidden states, a few positions at a time (what the train step runs, so
    201k-wide logits are never whole), equal the terms over the full logits — values and gradients."""
    rng = np.random.default_rng(1)
    P, K, T, D, V = 1, 3, 13, 6, 17
    W = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    unembed = lambda h: jnp.einsum("btd,dv->btv", h, W)
    hidden = jnp.asarray(rng.normal(size=(P * K, T, D)), jnp.float32)
    kd_hidden = jnp.asarray(rng.normal(size=(P * K, T, D)), jnp.float32)
    label = np.zeros((P, K, T), bool)
    label[..., 5:] = True
    batch = {"tokens": rng.integers(0, V, (P, K, T)).astype(np.int32), "label_mask": label,
             "kd_index": np.where(np.roll(label, -1, axis=-1), np.arange(T), -1).astype(np.int32)}
    w = {"lm": 1.0, "kd": 0.5}

    def full(h):
        return losses.compute({"lm_logits": unembed(h)}, batch, w, kd_logits=unembed(kd_hidden), kd_temperature=2.0)

    def chunked(h):
        return losses.compute({"hidden": h}, batch, w, kd_hidden=kd_hidden, kd_temperature=2.0, unembed=unembed,
                              chunk=4)
    (a, ta), ga = jax.value_and_grad(full, has_aux=True)(hidden)
    (b, tb), gb = jax.value_and_grad(chunked, has_aux=True)(hidden)
    assert set(ta) == set(tb) == {"lm", "kd"}
    for k in ta:
        assert float(ta[k]) == pytest.approx(float(tb[k]), rel=1e-5)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-4, atol=1e-6)
