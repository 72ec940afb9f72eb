"""Stage 2: K-stream plans. The teacher proposes section ranges, plan items and notes contracts;
this stage validates them (schema, contiguous tiling, unique items within the slot budget, Blind
Start lint) and writes ``plans/docs/<sample_id>.json`` (``schemas.PLAN``) per document."""
from __future__ import annotations

import time

from data_pipeline import qc, schemas, sources
from data_pipeline.context import Context, write_report
from data_pipeline.docstage import Rejected, run_documents
from data_pipeline.storage import fingerprint, iter_jsonl
from pdt_jax.records import canonical_plan_text, stream_name


def build_plan(doc: dict, answer: dict, teacher: str, prompt_template: str) -> dict:
    """A validated teacher answer -> the stored plan artefact."""
    streams, catalog = [], []
    for i, s in enumerate(answer["streams"]):
        sid = stream_name(i)
        streams.append({
            "stream_id": sid, "header": s["header"], "summary": s["summary"],
            "entities": list(dict.fromkeys(s["entities"])),
            "plan_items": s["plan_items"], "notes_contract": s["notes_contract"],
            "section_contract": {"type": "section_index_range", "start": s["section_start"],
                                 "end": s["section_end"]},
        })
        catalog += [{"text": canonical_plan_text(t), "stream_id": sid} for t in s["plan_items"]]
    plan = {
        "schema_version": schemas.PLAN_SCHEMA_VERSION, "sample_id": doc["sample_id"],
        "title": doc["title"], "prompt": prompt_template.format(title=doc["title"]),
        "num_streams": len(streams), "sectional_independence": True, "teacher": teacher,
        "streams": streams, "catalog": catalog,
        "lint_warnings": qc.cross_stream_lint(answer),
    }
    schemas.validate(plan, schemas.PLAN, "plan")
    return plan


def accepted_documents(ctx: Context) -> list[tuple[str, dict]]:
    path = ctx.stage_dir("preflight") / "accepted.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the preflight stage first")
    docs = [(row["sample_id"], row) for _, row in iter_jsonl(path)]
    return docs[:ctx.limit] if ctx.limit is not None else docs


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    cfg, k = ctx.config.plans, ctx.num_streams()
    teacher = ctx.teacher
    fp = fingerprint({"plans": ctx.section("plans"), "num_streams": k,
                      "teacher": teacher.fingerprint()})

    def work(sid: str, doc: dict) -> dict:
        text, spans = sources.document_text(doc)
        section_texts = [text[a:b] for a, b in spans]

        def validate(answer):
            qc.check_plan_answer(answer, len(doc["sections"]), int(cfg.max_plan_items), cfg.lint, section_texts,
                                 int(cfg.max_entities))
        answer = teacher.plan(doc, k, validate)
        try:
            return build_plan(doc, answer, teacher.name, cfg.prompt_template)
        except ValueError as e:
            raise Rejected(f"plan invalid: {e}") from None

    counts = run_documents(ctx.stage_dir("plans"), accepted_documents(ctx), work, fp,
                           int(ctx.config.teacher.concurrency), "plans", ctx.config.progress,
                           ctx.redact)
    return write_report(ctx.stage_dir("plans"), fp, started, counts, {"teacher": teacher.report()})
