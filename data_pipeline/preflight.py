"""Stage 1: deterministic filters (length, characters, structure, duplicates) and an optional LLM
quality classifier. Writes ``preflight/{accepted,rejected}.jsonl`` and ``preflight/report.json``."""
from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from pathlib import Path

from tqdm import tqdm

from data_pipeline import coordination, sources, synthetic_world
from data_pipeline.context import Context, files_fingerprint, stage_is_current, write_report
from data_pipeline.storage import InputError, read_json, write_json, write_jsonl
from data_pipeline.teachers.base import TeacherError

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


def sample_id_of(doc_id: str) -> str:
    """A file-name-safe id; a hash suffix keeps two ids that sanitise alike apart."""
    safe = _SAFE_ID.sub("_", doc_id)[:80]
    if safe != doc_id:
        safe += "-" + hashlib.sha256(doc_id.encode()).hexdigest()[:8]
    return safe


def source_paths(ctx: Context) -> list[Path]:
    src = ctx.config.source
    if src.kind in ("synthetic", "coordination"):
        out = ctx.work_dir / "source"
        # The world is rebuilt when the config asks for another one (kind, num_documents, seed) or
        # when a killed run left part of it: world.json is written last and names what the files hold.
        want = {"num_documents": int(src.num_documents), "seed": int(src.seed)}
        truth = "facts.jsonl"
        if src.kind == "coordination":
            want["kind"], want["version"], truth = "coordination", coordination.VERSION, "coordination_truth.json"
        marker = out / "world.json"
        if not (marker.exists() and read_json(marker) == want and (out / "documents.jsonl").exists()
                and (out / truth).exists()):
            marker.unlink(missing_ok=True)
            if src.kind == "coordination":
                coordination.write(out, want["num_documents"], want["seed"])
            else:
                synthetic_world.write_world(out, want["num_documents"], want["seed"])
            write_json(marker, want)
        return [out / "documents.jsonl"]
    if src.kind == "files":
        paths = src.paths.split(",") if isinstance(src.paths, str) else list(src.paths)
        return [Path(p.strip()) for p in paths if p.strip()]
    raise ValueError(f"unknown source.kind {src.kind!r} (use 'files', 'synthetic' or 'coordination')")


def _char_problem(text: str, cfg) -> str | None:
    if "\x00" in text:
        return "contains NUL bytes"
    control = sum(1 for c in text if unicodedata.category(c) == "Cc" and c not in "\n\t\r")
    if control / max(len(text), 1) > cfg.max_control_ratio:
        return f"control-character ratio {control / len(text):.3f} > {cfg.max_control_ratio}"
    letters = [c for c in text if c.isalpha()]
    non_latin = sum(1 for c in letters if not unicodedata.name(c, "").startswith("LATIN"))
    if letters and non_latin / len(letters) > cfg.max_non_latin_ratio:
        return f"non-Latin letter ratio {non_latin / len(letters):.3f} > {cfg.max_non_latin_ratio}"
    return None


def run(ctx: Context) -> dict:
    started = time.perf_counter()
    cfg, stage_dir = ctx.config.preflight, ctx.stage_dir("preflight")
    paths = source_paths(ctx)
    fp = files_fingerprint(paths, {"preflight": ctx.section("preflight"), "limit": ctx.limit,
                                   "num_streams": ctx.num_streams(),
                                   "teacher": ctx.teacher.fingerprint()
                                   if cfg.llm_classifier else None})
    outputs = [stage_dir / "accepted.jsonl", stage_dir / "rejected.jsonl"]
    if stage_is_current(stage_dir, fp, outputs):
        return {"skipped": True}
    min_sections = max(int(cfg.min_sections), ctx.num_streams())
    accepted, rejected, seen_ids, seen_digest = [], [], set(), {}
    docs = sources.iter_documents([str(p) for p in paths])
    for n, doc in enumerate(tqdm(docs, desc="preflight", disable=not ctx.config.progress,
                                 unit="doc")):
        if ctx.limit is not None and n >= ctx.limit:
            break
        sid = sample_id_of(doc["doc_id"])
        text, _ = sources.document_text(doc)
        digest = hashlib.sha256(" ".join(text.casefold().split()).encode()).hexdigest()
        reason, category = None, None
        if sid in seen_ids:
            category, reason = "duplicate_id", f"duplicate doc_id {doc['doc_id']!r}"
        elif len(text) < cfg.min_chars or len(text) > cfg.max_chars:
            category = "length"
            reason = f"length {len(text)} chars outside [{cfg.min_chars}, {cfg.max_chars}]"
        elif len(doc["sections"]) < min_sections:
            category = "structure"
            reason = f"{len(doc['sections'])} sections < {min_sections} required"
        elif (problem := _char_problem(text, cfg)) is not None:
            category, reason = "characters", problem
        elif cfg.dedupe and digest in seen_digest:
            category, reason = "duplicate_content", f"duplicate content of {seen_digest[digest]}"
        elif cfg.llm_classifier:
            try:
                verdict = ctx.teacher.classify(doc)
                if not verdict["keep"]:
                    category = "quality"
                    reason = f"quality classifier: {verdict['reason'] or 'rejected'}"
            except TeacherError as e:
                category, reason = "quality_error", f"quality classifier failed: {ctx.redact(e.reason)}"
        seen_ids.add(sid)
        if reason is None:
            seen_digest.setdefault(digest, sid)
            accepted.append({"sample_id": sid, **doc, "dedupe_key": digest})
        else:
            rejected.append({"sample_id": sid, "doc_id": doc["doc_id"], "category": category,
                             "reason": reason})
    if not accepted and not rejected:
        raise InputError(f"source {[str(p) for p in paths]}: no documents (an empty source would export "
                         f"an empty dataset)")
    write_jsonl(stage_dir / "accepted.jsonl", accepted)
    write_jsonl(stage_dir / "rejected.jsonl", rejected)
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r["category"]] = reasons.get(r["category"], 0) + 1
    counts = {"input": len(accepted) + len(rejected), "processed": len(accepted) + len(rejected),
              "accepted": len(accepted), "rejected": len(rejected)}
    extra = {"rejection_reasons": reasons}
    if cfg.llm_classifier:
        extra["teacher"] = ctx.teacher.report()
    return write_report(stage_dir, fp, started, counts, extra)
