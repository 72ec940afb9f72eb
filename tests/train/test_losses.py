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
    # A retry reads one round more (horizon v + 1 − Δ): every ready block stays ready, some become so.
    r, q = b["readiness"][b["block_mask"]], b["readiness_retry"][b["block_mask"]]
    assert (q >= r).all() and (q > r).any()
    assert set(np.unique(b["coverage"])) <= {0.0, 0.5, 1.0} and (b["coverage"] == 1.0).any()


def test_article_rows_hold_every_section_once_in_order(records):
    """Trunk pretraining's rows (the document form): one article per record — prompt, then each
    stream's section tokens in order, one EOS at the end — and every stream's supervised position
    predicts, in the article, the token its own row has next; only the last stream's EOS counts."""
    tok = Tokenizer.tiny()
    # Stream 2 has a prefix of its own: the article is the writer's (no prefix), the mapping still holds.
    spec = data.RowSpec(num_streams=3, block_size=4, lag=1, plan_slots=16, notes_dim=8, buckets=(128, 512, 2048),
                        article=True, stream_prefixes=(("stream_2", "Be brief. "),))
    b = {k: v[0] for k, v in data.collate([data.Featurizer(spec, tok)(r) for r in records[:2]], spec).items()}
    eos = tok.eos_ids[0]
    for p, r in enumerate(records[:2]):
        art = b["kd_tokens"][p, 0, :b["kd_lengths"][p, 0]]
        assert (b["kd_tokens"][p] == b["kd_tokens"][p, :1]).all()          # the same row for every stream
        body = [tok.encode(t) for t in r["target_text"]]
        s0 = b["target_start"][p, 0]
        assert list(art) == list(b["tokens"][p, 0, :s0]) + sum(body, []) + [eos]
        for k in range(3):
            L = b["lengths"][p, k]
            sup = np.flatnonzero(b["label_mask"][p, k, 1:])    # positions t whose next token is scored
            assert len(sup) > 5
            for t in sup:
                assert art[b["kd_index"][p, k, t] + 1] == b["tokens"][p, k, t + 1]
            assert b["label_mask"][p, k, L - 1] == (k == 2)                   # the EOS: the last stream's only
    assert b["target_start"][0, 1] > b["target_start"][0, 0]                  # the prefix is in stream 2's row only
    # An article longer than the largest bucket is refused, naming the record and the field.
    with pytest.raises(ValueError, match=r"data\.buckets"):
        data.Featurizer(data.RowSpec(num_streams=3, block_size=4, lag=1, plan_slots=16, notes_dim=8,
                                     buckets=(128, 512), article=True), tok)(records[0])


def test_a_run_begun_before_the_shared_term_still_resumes():
    """The resume digest ignores terms at weight 0 (not computed: e.g. the 'shared' term, which
    workdirs started before it existed lack)."""
    from ml_collections import ConfigDict

    from pdt_jax import config_files
    from pdt_jax.train import loop
    c = config_files.load("configs/stage2.py:tiny", [])
    d = c.to_dict()
    del d["stage"]["losses"]["shared"]
    assert loop.config_digest(c) == loop.config_digest(ConfigDict(d))
    c.stage.losses.shared = 0.5
    assert loop.config_digest(c) != loop.config_digest(ConfigDict(d))


def test_each_term_is_the_hand_computed_one():
    rng = np.random.default_rng(0)
    P, K, T, V, U, S, N = 1, 3, 10, 11, 3, 4, 5
    tokens = rng.integers(0, V, (P, K, T)).astype(np.int32)
    label = np.zeros((P, K, T), bool)
    label[..., 4:9] = True
    shared = np.zeros_like(label)
    shared[0, 1, [5, 7]] = shared[0, 2, 6] = True   # a sibling's founder and year, restated
    batch = {"tokens": tokens, "label_mask": label, "shared_mask": shared,
             "plan_ids": np.array([[5, 0, 7, 0]], np.int32),
             "block_mask": np.ones((P, K, U), bool), "teacher_notes": rng.normal(size=(P, K, U, N)).astype(np.float32),
             "coverage": rng.choice([0.0, 0.5, 1.0], (P, K, U, S)).astype(np.float32),
             "coverage_item_mask": np.array([[True, False, True, False]]), "readiness": np.ones((P, K, U), np.float32),
             "readiness_retry": rng.integers(0, 2, (P, K, U)).astype(np.float32),
             # The teacher's positions: those that predict a supervised token (3..7), as collate sets them.
             "kd_index": np.where(np.roll(label, -1, axis=-1), np.arange(T), -1).astype(np.int32)}
    out = {"lm_logits": rng.normal(size=(P * K, T, V)).astype(np.float32),
           "planner_logits": rng.normal(size=(P, S, 9)).astype(np.float32),
           "notes": rng.normal(size=(P, K, U, N)).astype(np.float32),
           "speculative_notes": rng.normal(size=(P, K, U, N)).astype(np.float32),
           "block_present": np.ones((P, K, U), bool), "coverage_logits": rng.normal(size=(P, K, U, S)).astype(np.float32),
           "readiness_logits": rng.normal(size=(P, K, U)).astype(np.float32),
           "retry_readiness_logits": rng.normal(size=(P, K, U)).astype(np.float32),
           # Blocks whose retry would read the attempt's window again are never asked about.
           "retry_differs": np.array([[[True, False, True], [True, True, True], [False, True, True]]]),
           "stream_logits": rng.normal(size=(P, K, K)).astype(np.float32)}
    kd = rng.normal(size=(P * K, T, V)).astype(np.float32)
    w = {t: 1.0 for t in losses.TERMS}
    _, terms = losses.compute(out, batch, w, kd_logits=kd, kd_temperature=2.0)
    logsm = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
    # LM: position t scores token t + 1 where the token at t + 1 is supervised (t = 3..7).
    lp = logsm(out["lm_logits"])
    want = np.mean([-lp[r, t, tokens.reshape(-1, T)[r, t + 1]] for r in range(3) for t in range(3, 8)])
    assert terms["lm"] == pytest.approx(want, rel=1e-5)
    # shared: the same CE, on the three restated tokens only (predicted at t − 1).
    want = np.mean([-lp[r, t - 1, tokens.reshape(-1, T)[r, t]] for r, t in ((1, 5), (1, 7), (2, 6))])
    assert terms["shared"] == pytest.approx(want, rel=1e-5)
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
    # retry: BCE of the retry pairs against the retry labels, on the blocks whose window differs.
    x, y, m = out["retry_readiness_logits"], batch["readiness_retry"], out["retry_differs"]
    bce = -(y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-x))))
    assert terms["retry"] == pytest.approx(bce[m].mean(), rel=1e-5)
    assert terms["retry"] != pytest.approx(bce.mean(), rel=1e-3)
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
             "shared_mask": label & (rng.random(label.shape) < 0.3),
             "kd_index": np.where(np.roll(label, -1, axis=-1), np.arange(T), -1).astype(np.int32)}
    w = {"lm": 1.0, "kd": 0.5, "shared": 2.0}

    def full(h):
        return losses.compute({"lm_logits": unembed(h)}, batch, w, kd_logits=unembed(kd_hidden), kd_temperature=2.0)

    def chunked(h):
        return losses.compute({"hidden": h}, batch, w, kd_hidden=kd_hidden, kd_temperature=2.0, unembed=unembed,
                              chunk=4)
    (a, ta), ga = jax.value_and_grad(full, has_aux=True)(hidden)
    (b, tb), gb = jax.value_and_grad(chunked, has_aux=True)(hidden)
    assert set(ta) == set(tb) == {"lm", "kd", "shared"} and float(ta["shared"]) != float(ta["lm"])
    for k in ta:
        assert float(ta[k]) == pytest.approx(float(tb[k]), rel=1e-5)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-4, atol=1e-6)


def _record(texts, mentions, planned=()):
    return {"target_text": texts, "entity_mentions": mentions, "planned_entities": list(planned)}


def test_shared_spans_are_what_a_sibling_introduced():
    """A name a sibling introduced (not one the plan announces), and a number an earlier stream
    wrote, are shared where another stream restates them; the introducer's own mentions are not."""
    texts = ["Oslo was founded by Ada in 1734. Oslo has 40 mills.",
             "Ada built the market of Oslo.",
             "Oslo has honoured Ada since 1734, with 12 mills. Bo came in 1734."]
    mentions = [[[0, 4, 0], [20, 23, 1], [33, 37, 0]],
                [[0, 3, 1], [24, 28, 0]],
                [[0, 4, 0], [18, 21, 1], [49, 51, 2]]]
    spans = R.shared_spans(_record(texts, mentions, planned=[0]))
    assert spans[0] == []                                     # the introducer restates nothing
    assert spans[1] == [(0, 3)]                               # Ada; Oslo is planned (in the prompt)
    assert [texts[2][a:b] for a, b in spans[2]] == ["Ada", "1734", "1734"]   # not 12, not Bo (its own)
    # Without a plan contract the town is the first stream's too.
    assert R.shared_spans(_record(texts, mentions))[1] == [(0, 3), (24, 28)]


def test_shared_mask_marks_the_restated_tokens(records):
    tok = Tokenizer.tiny()
    spec = data.RowSpec(num_streams=3, block_size=4, lag=1, plan_slots=16, notes_dim=8, buckets=(128, 512))
    for r in records:
        f = data.Featurizer(spec, tok)(r)
        spans = R.shared_spans(r)
        for k in range(3):
            ids, offs = tok.encode_with_offsets(r["target_text"][k])
            want = [any(a < e and s < b for a, b in spans[k]) for s, e in offs]
            got = list(f["shared_masks"][k][:len(offs)])
            assert got == [w and bool(m) for w, m in zip(want, f["label_masks"][k])]
        if any(spans[1:]):
            return
    pytest.fail("no record of the tiny dataset restates a sibling's entity or number")
