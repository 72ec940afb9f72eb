"""Speculative notes: deterministic degradations of the true notes (what an imperfect student might
publish). Each variant drops facts, swaps fact objects for other facts' objects (a plausible
hallucination) and blurs certainty; the noise draws come from the sample id, so re-runs agree."""
from __future__ import annotations

import copy
import hashlib
import random


def variants(sample_id: str, true_notes: dict[str, dict], count: int, drop_fact: float,
             swap_object: float) -> list[dict]:
    all_objects = sorted({f["object"] for n in true_notes.values() for f in n["FACT"]})
    out = []
    for v in range(count):
        seed = int.from_bytes(hashlib.sha256(f"{sample_id}:{v}".encode()).digest()[:8], "big")
        rng = random.Random(seed)
        notes, dropped, swapped = {}, 0, 0
        for sid in sorted(true_notes):
            n = copy.deepcopy(true_notes[sid])
            facts = []
            for f in n["FACT"]:
                if rng.random() < drop_fact:
                    dropped += 1
                    continue
                others = [o for o in all_objects if o != f["object"]]
                if others and rng.random() < swap_object:
                    f["object"] = rng.choice(others)
                    swapped += 1
                f["certainty"] = round(min(1.0, max(0.0, f["certainty"] - 0.3 * rng.random())), 3)
                facts.append(f)
            n["FACT"] = facts
            notes[sid] = n
        out.append({"variant_id": v, "notes": notes,
                    "noise": {"seed": seed, "drop_fact": drop_fact, "swap_object": swap_object,
                              "facts_dropped": dropped, "objects_swapped": swapped}})
    return out
