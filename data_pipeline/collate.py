"""Stage 4: one Parquet row per document with its plan and notes, split train/validation/test BY
DOCUMENT. The split is a salted hash of the sample id, so a document keeps its split when the corpus
grows, and nothing derived from one document (speculative variants included) can cross splits."""
from __future__ import annotations

import hashlib
import time

import pyarrow as pa

from data_pipeline.context import Context, files_fingerprint, stage_is_current, write_report
from data_pipeline.docstage import accepted_ids, load_artefact
from data_pipeline.plans import accepted_documents
from data_pipeline.storage import dumps, write_json, write_parquet
from pdt_jax.records import SPLITS

COLLATE_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("split", pa.string()), ("title", pa.string()),
    ("prompt", pa.string()), ("document_json", pa.string()), ("plan_json", pa.string()),
    ("notes_json", pa.string()),
])


def split_of(sample_id: str, fractions: tuple[float, float, float], salt: str) -> str:
    u = int.from_bytes(hashlib.sha256(f"{salt}::{sample_id}".encode()).digest()[:8], "big") / 2**64
    if u < fractions[0]:
        return SPLITS[0]
    return SPLITS[1] if u < fractions[0] + fractions[1] else SPLITS[2]


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    cfg, stage_dir = ctx.config.collate, ctx.stage_dir("collate")
    fractions = tuple(float(x) for x in cfg.fractions)  # checked with the config (config_check.py)
    notes_dir, plans_dir = ctx.stage_dir("notes"), ctx.stage_dir("plans")
    ids = accepted_ids(notes_dir)
    if ctx.limit is not None:
        ids = ids[:ctx.limit]
    # Everything the rows are built from: the documents (preflight), their plans and notes.
    inputs = ([ctx.stage_dir("preflight") / "accepted.jsonl", notes_dir / "accepted.jsonl"]
              + [plans_dir / "docs" / f"{s}.json" for s in ids] + [notes_dir / "docs" / f"{s}.json" for s in ids])
    fp = files_fingerprint(inputs, {"collate": ctx.section("collate")})
    outputs = [stage_dir / f"{s}.parquet" for s in SPLITS]
    if stage_is_current(stage_dir, fp, outputs):
        return {"skipped": True}
    docs = dict(accepted_documents(ctx))
    rows = {s: [] for s in SPLITS}
    for sid in ids:
        doc = {k: docs[sid][k] for k in ("sample_id", "doc_id", "title", "sections")}
        plan = load_artefact(plans_dir, sid)
        notes = load_artefact(notes_dir, sid)
        for art in (plan, notes):
            art.pop("fingerprint", None)
        split = split_of(sid, fractions, cfg.split_salt)
        rows[split].append({"sample_id": sid, "split": split, "title": doc["title"],
                            "prompt": plan["prompt"], "document_json": dumps(doc),
                            "plan_json": dumps(plan), "notes_json": dumps(notes)})
    for split in SPLITS:
        write_parquet(stage_dir / f"{split}.parquet",
                      pa.Table.from_pylist(rows[split], schema=COLLATE_SCHEMA))
    counts = {"input": len(ids), "processed": len(ids),
              **{split: len(rows[split]) for split in SPLITS}}
    write_json(stage_dir / "manifest.json", {"counts": counts, "fractions": list(fractions),
                                             "split_salt": cfg.split_salt})
    return write_report(stage_dir, fp, started, counts, {})
