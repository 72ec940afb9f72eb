"""The offline teacher: plans from section structure, notes by deterministic extraction."""
from __future__ import annotations

from data_pipeline import extraction
from data_pipeline.teachers.base import Teacher, TeacherError, Validator
from pdt_jax.records import canonical_plan_text


def balanced_partition(lengths: list[int], parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) groups of ``lengths`` minimising the largest group (exact DP)."""
    n = len(lengths)
    if n < parts:
        raise TeacherError(f"{n} sections cannot fill {parts} streams")
    prefix = [0]
    for x in lengths:
        prefix.append(prefix[-1] + x)
    inf = float("inf")
    # best[k][i]: smallest max-group cost splitting the first i sections into k groups
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for k in range(1, parts + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    groups, i = [], n
    for k in range(parts, 0, -1):
        groups.append((cut[k][i], i))
        i = cut[k][i]
    return groups[::-1]


def _checked(answer: dict, validate: Validator, what: str) -> dict:
    """The answer, after the stage's schema check (when given) turned a failure into a TeacherError."""
    if validate is not None:
        try:
            validate(answer)
        except ValueError as e:
            raise TeacherError(f"procedural {what} invalid: {e}") from None
    return answer


class ProceduralTeacher(Teacher):
    name = "procedural"
    coverage_method = "section_structure"

    def confirms_coverage(self) -> bool:
        # each plan item *is* an owned section heading, so its coverage is known, not guessed
        return True

    def plan(self, doc: dict, num_streams: int, validate: Validator) -> dict:
        sections = doc["sections"]
        groups = balanced_partition([len(s["heading"]) + len(s["text"]) + 1 for s in sections],
                                    num_streams)
        seen: set[str] = set()
        streams = []
        for start, end in groups:
            headings = [sections[i]["heading"] or f"Section {i + 1}" for i in range(start, end)]
            items = []
            for h in headings:
                item, n = h, 2
                while canonical_plan_text(item) in seen:
                    item, n = f"{h} part {n}", n + 1
                seen.add(canonical_plan_text(item))
                items.append(item)
            streams.append({
                "header": " and ".join(headings),
                "summary": f"{', '.join(headings)} of {doc['title']}",
                # a structure-only planner knows the subject and nothing else: every other
                # entity reaches siblings through the notes, which is what readiness measures
                "entities": [doc["title"]],
                "plan_items": items,
                "notes_contract": [f"ENT {doc['title']}"] + [f"COVERAGE {h}" for h in items],
                "section_start": start, "section_end": end,
            })
        answer = {"streams": streams}
        return _checked(answer, validate, "plan")

    def notes(self, doc: dict, plan: dict, stream_index: int, stream_text: str,
              validate: Validator) -> dict:
        headings = {sec["heading"] for sec in doc["sections"]}
        ids: dict[str, str] = {}
        for name, _ in extraction.entity_mentions(stream_text):
            if name not in headings:  # a heading line is structure, not an entity
                ids.setdefault(name, f"e{len(ids) + 1}")
        facts = []
        for start, end in extraction.sentences(stream_text):
            sent = stream_text[start:end]
            subject = next((n for n, off in extraction.entity_mentions(sent)
                            if off == 0 and n in ids), None)
            parts = extraction.split_fact(sent, subject) if subject else None
            if parts is None:
                continue
            facts.append({"subj_id": ids[subject], "predicate": parts[0], "object": parts[1],
                          "certainty": 0.9, "evidence": sent})
        stream = plan["streams"][stream_index]
        coverage = [{"plan_item": item, "status": "covered"} for item in stream["plan_items"]]
        answer = {
            "entities": [{"id": i, "name": n, "type": "entity", "aliases": []}
                         for n, i in ids.items()],
            "facts": facts, "coverage": coverage,
        }
        return _checked(answer, validate, "notes")
