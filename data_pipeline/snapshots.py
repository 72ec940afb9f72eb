"""Versioned notes snapshots and readiness labels, both derived from the data.

Rounds r = 1..M: round r writes block r-1 of every stream (text between cursors r-1 and r) and then
publishes snapshot r. Snapshot 0 is the plan contract, visible from the start. A stream decoding
round r sees its siblings' snapshots up to r - Δ. Cursors are offsets in the stream's own text, the
same coordinates as its evidence spans (the reference mixed document and stream coordinates).
"""
from __future__ import annotations

import re
from typing import Any

from pdt_jax.records import canonical_plan_text


def cursors(text: str, num_blocks: int) -> list[int]:
    """M+1 cursors from 0 to len(text), each interior one moved forward to a word boundary."""
    out = [0]
    for m in range(1, num_blocks):
        c = max(out[-1], round(m * len(text) / num_blocks))
        while c < len(text) and not text[c].isspace():
            c += 1
        out.append(c)
    out.append(len(text))
    return out


def _mention(name: str, text: str) -> int:
    """First offset of ``name`` as a whole word in ``text``, or -1."""
    m = re.search(r"(?<!\w)" + re.escape(name) + r"(?!\w)", text)
    return m.start() if m else -1


def first_mentions(notes: dict, text: str) -> dict[str, int]:
    """ENT id -> first offset of its name or an alias in the stream's text (len(text) if absent)."""
    out = {}
    for ent in notes["ENT"]:
        hits = [h for h in (_mention(n, text) for n in [ent["name"], *ent["aliases"]]) if h >= 0]
        out[ent["id"]] = min(hits) if hits else len(text)
    return out


def plan_contract_notes(plan: dict) -> dict[str, dict]:
    """Snapshot 0: each stream's announced entities and its plan items, none covered yet."""
    out = {}
    for s in plan["streams"]:
        sid = s["stream_id"]
        out[sid] = {
            "stream_id": sid,
            "ENT": [{"id": f"{sid}:p{i + 1}", "name": n, "aliases": [], "type": "planned",
                     "canonical": True} for i, n in enumerate(s["entities"])],
            "FACT": [],
            "COVERAGE": [{"plan_item_id": canonical_plan_text(t), "status": "missing"}
                         for t in s["plan_items"]],
        }
    return out


def versioned_notes(plan: dict, true_notes: dict[str, dict], texts: dict[str, str],
                    num_blocks: int) -> list[dict[str, Any]]:
    """Snapshot 0 (plan contract) + snapshots 1..M revealing each stream's notes as it writes.

    An ENT card appears once its first mention is behind the cursor, a FACT once its evidence ends
    behind it; COVERAGE is only final once the stream is finished, so it is published at M.
    """
    snaps = [{"snapshot_id": 0, "source": "plan_contract",
              "cursor": {sid: 0 for sid in texts}, "notes": plan_contract_notes(plan)}]
    cuts = {sid: cursors(texts[sid], num_blocks) for sid in texts}
    firsts = {sid: first_mentions(true_notes[sid], texts[sid]) for sid in texts}
    for m in range(1, num_blocks + 1):
        notes = {}
        for sid, full in true_notes.items():
            c = cuts[sid][m]
            notes[sid] = {
                "stream_id": sid,
                "ENT": [e for e in full["ENT"] if firsts[sid][e["id"]] < c or m == num_blocks],
                "FACT": [f for f in full["FACT"] if f["evidence_span"]["end"] <= c],
                "COVERAGE": full["COVERAGE"] if m == num_blocks else [],
            }
        snaps.append({"snapshot_id": m, "source": "teacher_true",
                      "cursor": {sid: cuts[sid][m] for sid in texts}, "notes": notes})
    return snaps


def readiness(true_notes: dict[str, dict], texts: dict[str, str], snapshots: list[dict],
              lag: int) -> dict[str, list[int]]:
    """Label per (stream, block): 1 if every entity the block mentions that another stream
    introduces is already on the bus for that round (its ENT card in a sibling snapshot
    <= r - Δ, or announced in the plan contract), else 0.

    An entity is introduced by the first stream (streams follow document order) whose true notes
    hold its ENT card.
    """
    sids = list(texts)
    num_blocks = len(snapshots) - 1
    planned = {e["name"] for notes in snapshots[0]["notes"].values() for e in notes["ENT"]}
    names: dict[str, set[str]] = {}
    for sid in sids:
        for e in true_notes[sid]["ENT"]:
            names.setdefault(e["name"], set()).update([e["name"], *e["aliases"]])
    owner: dict[str, str] = {}
    for sid in sids:
        for e in true_notes[sid]["ENT"]:
            owner.setdefault(e["name"], sid)
    labels: dict[str, list[int]] = {}
    for sid in sids:
        cut = [s["cursor"][sid] for s in snapshots[1:]]
        row = []
        for r in range(1, num_blocks + 1):
            block = texts[sid][(cut[r - 2] if r > 1 else 0):cut[r - 1]]
            visible_round = r - lag
            ready = 1
            for name, forms in names.items():
                src = owner.get(name)
                if src is None or src == sid or name in planned:
                    continue
                if not any(_mention(f, block) >= 0 for f in forms):
                    continue
                seen = visible_round >= 1 and any(
                    e["name"] == name for e in snapshots[visible_round]["notes"][src]["ENT"])
                if not seen:
                    ready = 0
                    break
            row.append(ready)
        labels[sid] = row
    return labels
