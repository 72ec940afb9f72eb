"""Stage 5: trainer records (``pdt_jax.records.RECORD_SCHEMA``), one Parquet file per split, plus
``export/metadata.json`` with the plan hashing metadata (D5) and counts. Every record passes
``records.validate_record`` and the notes QC again before it is written."""
from __future__ import annotations

import json
import re
import time

import pyarrow.parquet as pq

from data_pipeline import extraction, qc, sources
from data_pipeline.context import Context, files_fingerprint, stage_is_current, write_report
from data_pipeline.notes import stream_texts
from data_pipeline.storage import write_json, write_jsonl, write_parquet
from pdt_jax import records as R

_COVERAGE_VALUE = {"covered": 1.0, "partial": 0.5, "missing": 0.0}


def hashing_of(ctx: Context) -> R.PlanHashing:
    cfg = ctx.config.export
    return R.PlanHashing(int(cfg.plan_vocab_size), int(cfg.plan_hash_buckets), cfg.plan_hash_salt)


def entity_fields(notes: dict, sids: list[str], texts: dict[str, str]) -> dict:
    """``entity_names``, ``entity_mentions``, ``entity_references`` and ``planned_entities``
    (pdt_jax/records.py): every whole-word mention of every entity's name or alias in every
    stream's text, and the sentences that hold them."""
    forms: dict[str, set[str]] = {}
    planned = []
    for ent in (e for snap in notes["versioned_notes"][:1] for sid in sids for e in snap["notes"][sid]["ENT"]):
        forms.setdefault(ent["name"], {ent["name"]})
        planned.append(ent["name"])
    for sid in sids:
        for ent in notes["true_notes"][sid]["ENT"]:
            forms.setdefault(ent["name"], set()).update([ent["name"], *ent["aliases"]])
    names = list(forms)
    mentions, references = [], []
    for sid in sids:
        found = []
        for i, name in enumerate(names):
            for form in forms[name]:
                found += [(m.start(), m.end(), i) for m in re.finditer(r"(?<!\w)" + re.escape(form) + r"(?!\w)",
                                                                        texts[sid])]
        found = sorted(set(found))
        mentions.append([list(t) for t in found])
        refs = set()
        for start, end in extraction.sentences(texts[sid]):
            refs.update((start, end, i) for s0, _, i in found if start <= s0 < end)
        references.append([list(t) for t in sorted(refs)])
    return {"entity_names": names, "entity_mentions": mentions, "entity_references": references,
            "planned_entities": sorted({names.index(n) for n in planned})}


def plan_item_spans(doc: dict, plan: dict, offsets: dict[str, int]) -> list[list[int]]:
    """For each catalog item, the span (in its owner stream's text) of the owner's section that
    talks about it most (content words shared with heading and text; the first on a tie)."""
    _, spans = sources.document_text(doc)
    contract = {s["stream_id"]: s["section_contract"] for s in plan["streams"]}
    out = []
    for item in plan["catalog"]:
        c = contract[item["stream_id"]]
        words = qc.content_words(item["text"])
        best = max(range(c["start"], c["end"]), key=lambda i: (
            len(words & qc.content_words(doc["sections"][i]["heading"] + " " + doc["sections"][i]["text"])), -i))
        start, end = spans[best]
        out.append([start - offsets[item["stream_id"]], end - offsets[item["stream_id"]]])
    return out


def build_record(row: dict, hashing: R.PlanHashing) -> dict:
    doc, plan = json.loads(row["document_json"]), json.loads(row["plan_json"])
    notes = json.loads(row["notes_json"])
    qc.check_notes_artifact(notes, plan)
    document, texts, offsets = stream_texts(doc, plan)
    sids = [s["stream_id"] for s in plan["streams"]]
    index = {sid: i for i, sid in enumerate(sids)}
    confirmed = set(notes["coverage_provenance"]["confirmed_plan_items"])
    status = {c["plan_item_id"]: c["status"]
              for sid in sids for c in notes["true_notes"][sid]["COVERAGE"]}
    catalog = plan["catalog"]
    snaps = notes["versioned_notes"]
    return {
        "example_id": row["sample_id"], "sample_id": row["sample_id"], "split": row["split"],
        "title": row["title"], "prompt": plan["prompt"], "document_text": document,
        "stream_ids": sids,
        "target_text": [texts[s] for s in sids],
        "target_document_offset": [offsets[s] for s in sids],
        # sectional independence: each stream is supervised on exactly its own section
        "label_spans": [[[0, len(texts[s])]] if texts[s] else [] for s in sids],
        "sectional_independence": bool(plan["sectional_independence"]),
        "plan_item_text": [c["text"] for c in catalog],
        "plan_item_ids": [R.plan_item_id(c["text"], hashing) for c in catalog],
        "plan_item_stream": [index[c["stream_id"]] for c in catalog],
        "coverage_targets": [_COVERAGE_VALUE[status[c["text"]]] for c in catalog],
        "coverage_mask": [c["text"] in confirmed for c in catalog],
        "notes_text": [[R.render_notes(s["notes"][sid]) for sid in sids] for s in snaps],
        "snapshot_source": [s["source"] for s in snaps],
        "snapshot_cursor": [[s["cursor"][sid] for sid in sids] for s in snaps],
        "speculative_notes_text": [[R.render_notes(v["notes"][sid]) for sid in sids]
                                   for v in notes["speculative_notes"]],
        "readiness_labels": [notes["readiness"][sid] for sid in sids],
        "lag": int(notes["lag"]),
        "notes_schema_version": notes["schema_version"],
        "notes_json": row["notes_json"],
        **entity_fields(notes, sids, texts),
        "plan_item_span": plan_item_spans(doc, plan, offsets),
        **hashing.to_dict(),
    }


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    stage_dir, collate_dir = ctx.stage_dir("export"), ctx.stage_dir("collate")
    hashing = hashing_of(ctx)
    inputs = [collate_dir / f"{s}.parquet" for s in R.SPLITS]
    missing = [p for p in inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing: run the collate stage first")
    fp = files_fingerprint(inputs, {"export": ctx.section("export")})
    outputs = [stage_dir / f"{s}.parquet" for s in R.SPLITS] + [stage_dir / "metadata.json"]
    if stage_is_current(stage_dir, fp, outputs):
        return {"skipped": True}
    counts, rejected = {"input": 0, "processed": 0}, []
    readiness_ones = readiness_total = masked = items = 0
    for split, path in zip(R.SPLITS, inputs):
        recs = []
        for row in pq.read_table(path).to_pylist():
            counts["input"] += 1
            try:
                rec = build_record(row, hashing)
                R.validate_record(rec)
            except (ValueError, KeyError) as e:
                rejected.append({"sample_id": row["sample_id"], "reason": f"export: {e}"})
                continue
            recs.append(rec)
            readiness_ones += sum(map(sum, rec["readiness_labels"]))
            readiness_total += sum(map(len, rec["readiness_labels"]))
            items += len(rec["coverage_mask"])
            masked += len(rec["coverage_mask"]) - sum(rec["coverage_mask"])
        write_parquet(stage_dir / f"{split}.parquet", R.records_table(recs))
        counts[split] = len(recs)
        counts["processed"] += len(recs)
    write_jsonl(stage_dir / "rejected.jsonl", rejected)
    write_json(stage_dir / "metadata.json", {
        "plan_hashing": hashing.to_dict(), "record_schema_version": R.RECORD_SCHEMA_VERSION,
        "notes_schema_version": R.NOTES_SCHEMA_VERSION,
        "num_streams": ctx.num_streams(), "counts": {s: counts[s] for s in R.SPLITS}})
    stats = {"readiness_positive_rate": round(readiness_ones / max(readiness_total, 1), 4),
             "coverage_hint_fraction": round(masked / max(items, 1), 4),
             "rejected": len(rejected)}
    return write_report(stage_dir, fp, started, counts, {"stats": stats})
