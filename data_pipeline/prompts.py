"""Chat messages the openai teacher sends. ``VERSION`` enters the cache key's teacher fingerprint:
bump it whenever a prompt changes so stale answers are not reused."""
from __future__ import annotations

import json

VERSION = "1"
_SECTION_CHARS = 4000


def _numbered_sections(doc: dict) -> str:
    return "\n\n".join(f"[{i}] {s['heading']}\n{s['text'][:_SECTION_CHARS]}"
                       for i, s in enumerate(doc["sections"]))


def plan_messages(doc: dict, num_streams: int) -> list[dict]:
    n = len(doc["sections"])
    system = (
        "You plan how a parallel decoder writes an encyclopedic article as "
        f"{num_streams} independent streams that start at the same time. Split the numbered "
        f"sections into exactly {num_streams} contiguous, non-overlapping ranges "
        f"[section_start, section_end) covering all sections 0..{n} in order, one per stream. "
        "No stream may refer to another stream (Blind Start). For each stream give a header, a "
        "one-sentence summary, the named entities it needs, 1-6 plan_items (short generic topic "
        "labels such as 'early life' or 'economy', never document-specific names, unique across "
        "streams) and at least two notes_contract bullets (ENT/FACT/COVERAGE lines the stream "
        "must publish). Answer with JSON only, matching the given schema.")
    user = f"Title: {doc['title']}\nSections ({n}):\n\n{_numbered_sections(doc)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def notes_messages(doc: dict, plan: dict, stream_index: int, stream_text: str) -> list[dict]:
    stream = plan["streams"][stream_index]
    system = (
        "You write the notes one stream of a parallel decoder publishes while writing its part "
        "of an article (notes schema 2.0). entities: id (e1, e2, ...), name, type, aliases. "
        "facts: subj_id (an entity id), predicate, object, certainty in [0,1], and evidence: a "
        "verbatim quote copied exactly from the stream text. coverage: one entry per plan item "
        "listed, using the plan item text exactly, with status covered, partial or missing. "
        "Answer with JSON only, matching the given schema.")
    user = (f"Article: {doc['title']}\nStream: {stream['stream_id']} — {stream['header']}\n"
            f"Plan items: {json.dumps(stream['plan_items'], ensure_ascii=False)}\n"
            f"Notes contract: {json.dumps(stream['notes_contract'], ensure_ascii=False)}\n\n"
            f"Stream text:\n{stream_text}")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def quality_messages(doc: dict) -> list[dict]:
    headings = [s["heading"] for s in doc["sections"]][:15]
    body = "\n\n".join(s["text"] for s in doc["sections"])[:8000]
    system = ("You screen documents for a training corpus of encyclopedic articles. Keep "
              "factual, well-structured articles; reject lists, stubs, spam and non-prose. Answer "
              'with JSON only: {"keep": true|false, "reason": "..."}.')
    user = f"Title: {doc['title']}\nHeadings: {json.dumps(headings)}\n\n{body}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
