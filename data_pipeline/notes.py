"""Stage 3: notes (schema 2.0) per stream, evidence checked against the text, coverage aligned to
the plan catalog, versioned snapshots (0 = plan contract), speculative variants, readiness labels.
Writes ``notes/docs/<sample_id>.json`` (``schemas.NOTES``)."""
from __future__ import annotations

import time

from data_pipeline import qc, schemas, snapshots, sources, speculative
from data_pipeline.context import Context, write_report
from data_pipeline.docstage import Rejected, accepted_ids, load_artefact, run_documents
from data_pipeline.plans import accepted_documents
from data_pipeline.storage import fingerprint
from pdt_jax.records import NOTES_SCHEMA_VERSION, canonical_plan_text


def stream_texts(doc: dict, plan: dict) -> tuple[str, dict[str, str], dict[str, int]]:
    """(document text, stream id -> its target text, stream id -> offset in the document)."""
    text, spans = sources.document_text(doc)
    texts, offsets = {}, {}
    for s in plan["streams"]:
        c = s["section_contract"]
        lo, hi = spans[c["start"]][0], spans[c["end"] - 1][1]
        texts[s["stream_id"]], offsets[s["stream_id"]] = text[lo:hi], lo
    return text, texts, offsets


def stream_notes(sid: str, answer: dict, text: str, owned: list[str]) -> tuple[dict, int]:
    """A teacher answer -> StreamNotes with stream-local evidence spans; returns facts dropped.

    Evidence is located in the text rather than trusting offsets from the teacher; a quote that
    is not in the text is a fabricated span and its fact is dropped.
    """
    ents = []
    for e in answer["entities"]:  # an alias the text never uses is not evidence of anything: dropped
        aliases = [a for a in dict.fromkeys(e["aliases"]) if a != e["name"] and qc.occurs(a, text)]
        ents.append({"id": f"{sid}:{e['id']}", "name": e["name"], "aliases": aliases,
                     "type": e["type"], "canonical": True})
    facts, dropped = [], 0
    for f in answer["facts"]:
        quote = f["evidence"]
        start = text.find(quote)
        # A fabricated quote, or an object its quote does not support (numbers and content words), is dropped.
        if not quote.strip() or start < 0 or not qc.supported(f["object"], quote):
            dropped += 1
            continue
        facts.append({"subj_id": f"{sid}:{f['subj_id']}", "predicate": f["predicate"],
                      "object": f["object"], "certainty": float(f["certainty"]),
                      "evidence_span": {"start": start, "end": start + len(quote), "text": quote}})
    status = {canonical_plan_text(c["plan_item"]): c["status"] for c in answer["coverage"]}
    coverage = [{"plan_item_id": item, "status": status[item]} for item in owned]
    return {"stream_id": sid, "ENT": ents, "FACT": facts, "COVERAGE": coverage}, dropped


def build_notes(doc: dict, plan: dict, teacher, cfg) -> dict:
    _, texts, _ = stream_texts(doc, plan)
    true_notes, qc_counts, confirmed = {}, {"facts_dropped_bad_evidence": 0}, []  # (or an unsupported object)
    for k, s in enumerate(plan["streams"]):
        sid = s["stream_id"]
        owned = [c["text"] for c in plan["catalog"] if c["stream_id"] == sid]
        answer = teacher.notes(doc, plan, k, texts[sid],
                               lambda a, sid=sid: qc.check_notes_answer(a, plan["catalog"], sid, texts[sid],
                                                                        int(cfg.max_entities), int(cfg.max_facts)))
        notes, dropped = stream_notes(sid, answer, texts[sid], owned)
        qc_counts["facts_dropped_bad_evidence"] += dropped
        true_notes[sid] = notes
        # The owner stream's teacher judged the item while reading the text it covers; an LLM's
        # judgement counts as confirmed only if that stream also produced verified evidence.
        if teacher.confirms_coverage() or notes["FACT"]:
            confirmed += owned
    snaps = snapshots.versioned_notes(plan, true_notes, texts, int(cfg.num_blocks))
    lag = int(cfg.lag)
    artefact = {
        "schema_version": NOTES_SCHEMA_VERSION, "document_id": doc["sample_id"],
        "teacher": teacher.name, "true_notes": true_notes,
        "speculative_notes": speculative.variants(doc["sample_id"], true_notes,
                                                  int(cfg.speculative_variants),
                                                  float(cfg.drop_fact), float(cfg.swap_object)),
        "versioned_notes": snaps,
        "coverage_provenance": {
            "method": teacher.coverage_method, "schema_version": NOTES_SCHEMA_VERSION,
            "strength": "confirmed" if len(confirmed) == len(plan["catalog"]) else "hint",
            "confirmed_plan_items": confirmed},
        "sectional_independence": bool(plan["sectional_independence"]), "lag": lag,
        "readiness": snapshots.readiness(true_notes, texts, snaps, lag),
        "qc": qc_counts,
    }
    schemas.validate(artefact, schemas.NOTES, "notes")
    qc.check_notes_artifact(artefact, plan)
    return artefact


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    cfg, teacher = ctx.config.notes, ctx.teacher
    fp = fingerprint({"notes": ctx.section("notes"), "plans": ctx.section("plans"),
                      "num_streams": ctx.num_streams(), "teacher": teacher.fingerprint()})
    docs = dict(accepted_documents(ctx))
    plans_dir = ctx.stage_dir("plans")
    items = [(sid, docs[sid]) for sid in accepted_ids(plans_dir) if sid in docs]

    def work(sid: str, doc: dict) -> dict:
        plan = load_artefact(plans_dir, sid)
        try:
            return build_notes(doc, plan, teacher, cfg)
        except ValueError as e:
            raise Rejected(f"notes invalid: {e}") from None

    # A document's notes read the document and its plan: either changing redoes them.
    inputs = lambda sid, doc: {"document": doc, "plan": load_artefact(plans_dir, sid).get("fingerprint")}
    counts = run_documents(ctx.stage_dir("notes"), items, work, fp,
                           int(ctx.config.teacher.concurrency), "notes", ctx.config.progress,
                           ctx.redact, inputs=inputs)
    return write_report(ctx.stage_dir("notes"), fp, started, counts, {"teacher": teacher.report()})
