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
