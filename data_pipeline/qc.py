"""Quality checks shared by the stages. Each raises ValueError with a reason fit for a rejected file.

Seed contract: "Dataset QC rejects any sample where coverage signals omit a plan item or reference a
missing catalog entry."
"""
from __future__ import annotations

import re
from typing import Any

from pdt_jax.records import canonical_plan_text, stream_name

# "stream 2", "the other stream", "builds on stream one": Blind Start forbids cross-stream references
_CROSS_STREAM = re.compile(
    r"\bstreams?\s*(?:[0-9]+|one|two|three|four|five)\b"
    r"|\b(?:previous|prior|another|other|next|preceding|following)\s+streams?\b"
    r"|\b(?:depends?\s+on|uses|builds?\s+on|refin\w*)\s+(?:the\s+)?streams?\b",
    re.IGNORECASE)


def cross_stream_lint(answer: dict) -> list[str]:
    """Cross-stream references found in a plan answer's free text (empty list = clean)."""
    found = []
    for i, s in enumerate(answer["streams"]):
        for field in ("header", "summary"):
            for m in _CROSS_STREAM.finditer(s[field]):
                found.append(f"{stream_name(i)}.{field}: {m.group(0)!r}")
        for bullet in s["notes_contract"]:
            for m in _CROSS_STREAM.finditer(bullet):
                found.append(f"{stream_name(i)}.notes_contract: {m.group(0)!r}")
    return found


# Words too common to show that a plan item or a fact is about this text.
_STOPWORDS = frozenset("the and for with from that this into over under about their there these those was were "
                       "are has have had its his her one two year years".split())


def _folded(text: str) -> str:
    return " ".join(text.casefold().split())


def occurs(phrase: str, text: str) -> bool:
    """``phrase`` appears in ``text``, ignoring case and runs of whitespace."""
    p = _folded(phrase)
    return bool(p) and p in _folded(text)


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"\w+", text.casefold()) if (len(w) >= 3 or w.isdigit()) and w not in _STOPWORDS}


def supported(phrase: str, text: str) -> bool:
    """Some content word of ``phrase`` (a number, or a word of 3+ letters that is not a stopword)
    occurs in ``text``: a topic or a fact object the text actually talks about."""
    words = content_words(phrase)
    return bool(words) and bool(words & content_words(text))


def check_plan_answer(answer: dict, num_sections: int, max_plan_items: int, lint: str,
                      section_texts: list[str] | None = None, max_entities: int | None = None) -> None:
    """Section ranges tile 0..num_sections in order; plan items unique and within the slot budget;
    with the sections' texts, every plan item is supported by its own stream's sections and every
    entity occurs in the document (an item or entity found nowhere is invented, or injected)."""
    expected_start = 0
    for i, s in enumerate(answer["streams"]):
        start, end = s["section_start"], s["section_end"]
        if start != expected_start or not start < end <= num_sections:
            raise ValueError(
                f"{stream_name(i)}: sections [{start}, {end}) do not continue a contiguous tiling "
                f"(expected start {expected_start}, {num_sections} sections)")
        expected_start = end
    if expected_start != num_sections:
        raise ValueError(f"section ranges end at {expected_start}, document has {num_sections}")
    seen: dict[str, str] = {}
    total = 0
    for i, s in enumerate(answer["streams"]):
        for item in s["plan_items"]:
            canon = canonical_plan_text(item)
            if not canon:
                raise ValueError(f"{stream_name(i)}: plan item {item!r} is empty once canonical")
            if canon in seen:
                raise ValueError(f"plan item {item!r} appears twice ({seen[canon]} and "
                                 f"{stream_name(i)})")
            seen[canon] = stream_name(i)
            total += 1
    if total > max_plan_items:
        raise ValueError(f"{total} plan items exceed the {max_plan_items} planner slots")
    if section_texts is not None:
        document = _folded("".join(section_texts))
        for i, s in enumerate(answer["streams"]):
            own = content_words("".join(section_texts[s["section_start"]:s["section_end"]]))
            for item in s["plan_items"]:
                if not content_words(item) & own:
                    raise ValueError(f"{stream_name(i)}: plan item {item!r} is not supported by the text of its "
                                     f"sections [{s['section_start']}, {s['section_end']}) (no content word of it occurs)")
            if max_entities is not None and len(s["entities"]) > max_entities:
                raise ValueError(f"{stream_name(i)}: {len(s['entities'])} entities exceed plans.max_entities={max_entities}")
            for name in s["entities"]:
                if not _folded(name) or _folded(name) not in document:
                    raise ValueError(f"{stream_name(i)}: entity {name!r} does not occur in the document")
    if lint == "fail":
        found = cross_stream_lint(answer)
        if found:
            raise ValueError(f"cross-stream reference (Blind Start): {found[0]}")


def check_coverage(catalog: list[dict], stream_id: str, coverage: list[dict]) -> None:
    """``coverage`` of ``stream_id`` names each of its catalog items once and nothing else."""
    owned = [c["text"] for c in catalog if c["stream_id"] == stream_id]
    known = {c["text"] for c in catalog}
    seen = set()
    for cov in coverage:
        item = cov["plan_item_id"]
        if item not in known:
            raise ValueError(f"{stream_id}: coverage names {item!r}, which is not in the plan "
                             "catalog")
        if item not in owned:
            raise ValueError(f"{stream_id}: coverage names {item!r}, owned by another stream")
        if item in seen:
            raise ValueError(f"{stream_id}: coverage names {item!r} twice")
        seen.add(item)
    omitted = [t for t in owned if t not in seen]
    if omitted:
        raise ValueError(f"{stream_id}: coverage omits plan item {omitted[0]!r}")


def check_notes_answer(answer: dict, catalog: list[dict], stream_id: str, text: str | None = None,
                       max_entities: int | None = None, max_facts: int | None = None) -> None:
    """A teacher's notes answer: within the size limits, coverage aligned to the catalog, facts point
    at known entities, and (given the stream's text) every entity's name occurs in it."""
    if max_entities is not None and len(answer["entities"]) > max_entities:
        raise ValueError(f"{stream_id}: {len(answer['entities'])} entities exceed notes.max_entities={max_entities}")
    if max_facts is not None and len(answer["facts"]) > max_facts:
        raise ValueError(f"{stream_id}: {len(answer['facts'])} facts exceed notes.max_facts={max_facts}")
    coverage = [{"plan_item_id": canonical_plan_text(c["plan_item"]), "status": c["status"]}
                for c in answer["coverage"]]
    check_coverage(catalog, stream_id, coverage)
    if text is not None:
        folded = _folded(text)
        for e in answer["entities"]:
            if not _folded(e["name"]) or _folded(e["name"]) not in folded:
                raise ValueError(f"{stream_id}: entity {e['name']!r} does not occur in the stream's text")
    ids = [e["id"] for e in answer["entities"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{stream_id}: duplicate entity ids")
    for f in answer["facts"]:
        if f["subj_id"] not in ids:
            raise ValueError(f"{stream_id}: fact subject {f['subj_id']!r} is not an entity id")


def check_notes_artifact(notes: dict[str, Any], plan: dict[str, Any]) -> None:
    """Final QC over a notes artefact against its plan (re-run by export before writing records)."""
    for s in plan["streams"]:
        sid = s["stream_id"]
        if sid not in notes["true_notes"]:
            raise ValueError(f"{sid}: no true notes")
        check_coverage(plan["catalog"], sid, notes["true_notes"][sid]["COVERAGE"])
        ids = {e["id"] for e in notes["true_notes"][sid]["ENT"]}
        for f in notes["true_notes"][sid]["FACT"]:
            if f["subj_id"] not in ids:
                raise ValueError(f"{sid}: fact subject {f['subj_id']!r} has no ENT card")
