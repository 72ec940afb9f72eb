"""The record schema's invariants (pdt_jax.records), independent of any pipeline run."""
from __future__ import annotations

import copy
import pickle

import pytest

from data_pipeline import pipeline
from pdt_jax import records as R
from tests.data_pipeline.conftest import procedural_config


def test_plan_ids_are_canonical_salted_and_never_null():
    h = R.PlanHashing()
    assert R.plan_item_id("Early Life", h) == R.plan_item_id("  early-life!! ", h)
    assert R.plan_item_id("early life", h) != R.plan_item_id("economy", h)
    assert R.plan_item_id("economy", h) != R.plan_item_id("economy", R.PlanHashing(plan_hash_salt="x"))
    small = R.PlanHashing(plan_vocab_size=4, plan_hash_buckets=2)
    assert {R.plan_item_id(f"item {i}", small) for i in range(50)} == {1}
    assert all(1 <= R.plan_item_id(f"item {i}", R.PlanHashing(64, 64)) < 64 for i in range(200))
    with pytest.raises(ValueError, match="empty"):
        R.plan_item_id("!!!", h)
    with pytest.raises(ValueError, match="differ"):
        h.check_matches(R.PlanHashing(plan_hash_salt="other"))


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    work = tmp_path_factory.mktemp("rec")
    pipeline.run(procedural_config(work, 3), log=None)
    rows = [r for s in R.SPLITS for r in R.read_records(work / "export" / f"{s}.parquet").to_pylist()]
    return rows[0], work


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(stream_ids=["stream_0", "stream_1", "stream_2"]), "stream_1..stream_3"),
    (lambda r: r["target_text"].__setitem__(0, "not in the document"), "target_text\\[0\\]"),
    (lambda r: r["plan_item_ids"].__setitem__(0, r["plan_item_ids"][0] + 1), "expected"),
    (lambda r: r["readiness_labels"][0].__setitem__(0, 2), "0/1"),
    (lambda r: r["label_spans"][1].append([5, 10**6]), "outside"),
    (lambda r: r.pop("prompt"), "missing fields"),
    (lambda r: r["entity_mentions"][0].append([0, 10**6, 0]), "entity_mentions entry"),
    (lambda r: r["plan_item_span"].__setitem__(0, [5, 10**6]), "plan_item_span"),
])
def test_validate_record_rejects_broken_records(record, mutate, message):
    rec = copy.deepcopy(record[0])
    R.validate_record(rec)
    mutate(rec)
    with pytest.raises(ValueError, match=message):
        R.validate_record(rec)


def test_to_arrays_pads_and_source_pickles(record):
    rec, work = record
    arr = R.to_arrays(rec, plan_slots=8)
    p = len(rec["plan_item_ids"])
    assert arr["plan_item_mask_P"].sum() == p and (arr["plan_item_ids_P"][p:] == 0).all()
    assert (arr["plan_item_stream_P"][p:] == -1).all() and not arr["coverage_mask_P"][p:].any()
    with pytest.raises(ValueError, match="plan_slots"):
        R.to_arrays(rec, plan_slots=p - 1)
    src = R.RecordSource(str(work / "export" / f"{rec['split']}.parquet"))
    assert len(src) >= 1
    clone = pickle.loads(pickle.dumps(src))
    assert clone[0] == src[0]


def _tokens(text: str) -> list[list[int]]:
    """Whitespace 'tokens' (start, end): a stand-in for a tokenizer's offsets."""
    import re
    return [[m.start(), m.end()] for m in re.finditer(r"\S+", text)]


def test_block_labels_follow_the_bus_under_the_lag():
    """Three streams, blocks of 2 words. Stream 1 introduces Ardis in block 1 (its first
    mention); stream 2 mentions Ardis in blocks 0 and 3, stream 3 in block 1; Velmora is planned.
    Under lag Δ a sibling's block-u note is readable at round m iff u + 1 <= m - Δ."""
    texts = ["Velmora grew fast. Ardis came later. Then peace.",
             "Ardis knew Velmora. Then war came. Ardis left.",
             "Rain fell hard. Ardis returned home."]
    names = ["Velmora", "Ardis"]
    mentions = []
    for t in texts:
        found = [[t.index(n, i), t.index(n, i) + len(n), e] for e, n in enumerate(names)
                 for i in range(len(t)) if t.startswith(n, i) and (i == 0 or not t[i - 1].isalnum())]
        mentions.append(sorted(map(list, {tuple(x) for x in found})))
    rec = {"target_text": texts, "entity_names": names, "entity_mentions": mentions, "entity_references": mentions,
           "planned_entities": [0],
           "plan_item_span": [[0, 18], [19, 48], [0, 19], [20, 46], [0, 15]], "plan_item_stream": [0, 0, 1, 1, 2]}
    spans = [_tokens(t) for t in texts]
    ready0, cov = R.block_labels(rec, spans, tau=2, lag=0)
    # stream 1 introduces Ardis; stream 2's block 0 mentions it before anyone wrote it; its block 3
    # (round 3) reads stream 1's block-1 note (1 + 1 <= 3); stream 3's block 1 would need 1 + 1 <= 1
    assert ready0 == [[1, 1, 1, 1], [0, 1, 1, 1], [1, 0, 1]]
    ready1, _ = R.block_labels(rec, spans, tau=2, lag=1)
    assert ready1 == [[1, 1, 1, 1], [0, 1, 1, 1], [1, 0, 1]]
    ready2, _ = R.block_labels(rec, spans, tau=2, lag=2)
    assert ready2[1] == [0, 1, 1, 0]
    # coverage: own items by the block's end (0 before, 0.5 inside, 1 after), others' items 0
    assert cov[0][0] == [0.5, 0.0, 0.0, 0.0, 0.0] and cov[0][1] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert cov[0][-1] == [1.0, 1.0, 0.0, 0.0, 0.0] and cov[2][-1] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert {v for per_stream in cov for block in per_stream for v in block} == {0.0, 0.5, 1.0}


def test_a_block_depends_on_every_entity_its_sentence_refers_to():
    """A sentence about a sibling's entity spans several blocks: each of them waits for the note."""
    texts = ["Ardis Quell built the hall.", "Late that year the mayor thanked Ardis Quell warmly."]
    rec = {"target_text": texts, "entity_names": ["Ardis Quell"],
           "entity_mentions": [[[0, 11, 0]], [[33, 44, 0]]],
           "entity_references": [[[0, 27, 0]], [[0, 52, 0]]], "planned_entities": [],
           "plan_item_span": [[0, 27], [0, 52]], "plan_item_stream": [0, 1]}
    spans = [_tokens(t) for t in texts]
    readiness, _ = R.block_labels(rec, spans, tau=2, lag=0)
    # stream 2's one sentence covers all five of its blocks, the name only the fourth; stream 1's
    # note of block 0 is readable from round 1 on: only block 0 waits (mentions alone: none would)
    assert readiness == [[1, 1, 1], [0, 1, 1, 1, 1]]
    no_sentences = dict(rec, entity_references=rec["entity_mentions"])
    assert R.block_labels(no_sentences, spans, tau=2, lag=0)[0] == [[1, 1, 1], [1, 1, 1, 1, 1]]
