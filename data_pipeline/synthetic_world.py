"""A synthetic world: encyclopedic documents about invented entities, with ground-truth facts.

Names are built from syllables, so no fact can be known from pretraining: a model that states one
has read it from the document or the notes bus. Documents cross-reference each other (a city's
founder has their own article), which gives the readiness labels real cross-stream dependencies.

Everything derives from ``seed``: the same seed writes the same bytes.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from data_pipeline.storage import write_jsonl

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "gr", "kr", "st", "th", "vr", "sk"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ai", "ou"]
_CODAS = ["", "n", "r", "l", "s", "th", "nd", "rk", "lm"]
_INDUSTRIES = ["salt mining", "glassmaking", "river trade", "wool weaving", "shipbuilding",
               "copper smelting", "tea growing", "clockmaking"]
_OCCUPATIONS = ["cartographer", "engineer", "merchant", "physician", "astronomer", "architect",
                "composer", "botanist"]
_PRODUCTS = ["copper wire", "glass lenses", "river barges", "woollen cloth", "pocket clocks",
             "printed maps", "dyed silk", "iron bells"]
_FESTIVALS = ["Lantern", "Harvest", "Tide", "Ember", "Frost", "Bell"]
_REGIONS = ["northern", "southern", "eastern", "western", "central"]


class _Namer:
    def __init__(self, rng: random.Random):
        self._rng, self._used = rng, set()

    def word(self, syllables: int) -> str:
        while True:
            w = "".join(self._rng.choice(_ONSETS) + self._rng.choice(_VOWELS) +
                        self._rng.choice(_CODAS) for _ in range(syllables)).capitalize()
            if w not in self._used:
                self._used.add(w)
                return w


def build_world(num_documents: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Returns (documents, ground-truth facts). Documents cycle city, person, organisation."""
    rng = random.Random(seed)
    namer = _Namer(rng)
    n_each = max(1, (num_documents + 2) // 3)
    cities = [namer.word(2) for _ in range(n_each)]
    rivers = [namer.word(2) for _ in range(n_each)]
    people = [f"{namer.word(2)} {namer.word(2)}" for _ in range(n_each)]
    orgs = [f"{namer.word(2)} Works" for _ in range(n_each)]
    docs, facts = [], []

    def section(doc_id, heading, sentences):
        for subj, pred, obj, sent in sentences:
            facts.append({"doc_id": doc_id, "section": heading, "subject": subj,
                          "predicate": pred, "object": obj, "sentence": sent})
        return {"heading": heading, "text": " ".join(s[3] for s in sentences)}

    def fact(subj, pred, obj):
        return subj, pred, str(obj), f"{subj} {pred} {obj}."

    for i in range(num_documents):
        j, kind = i // 3, i % 3
        doc_id = f"synth-{i:05d}"
        if kind == 0:
            c, p, o = cities[j], people[j], orgs[(j + 1) % n_each]
            title, sections = c, [
                section(doc_id, "Overview", [
                    fact(c, "is a city in the", f"{rng.choice(_REGIONS)} highlands"),
                    fact(c, "has a population of", rng.randrange(2000, 900000))]),
                section(doc_id, "History", [
                    fact(c, "was founded in", rng.randrange(900, 1800)),
                    fact(c, "was founded by", p)]),
                section(doc_id, "Geography", [
                    fact(c, "lies on the banks of the", f"{rivers[j]} river"),
                    fact(c, "has an average elevation of", f"{rng.randrange(5, 2400)} metres")]),
                section(doc_id, "Economy", [
                    fact(c, "is known for", rng.choice(_INDUSTRIES)),
                    fact(c, "is home to", o)]),
                section(doc_id, "Culture", [
                    fact(c, "celebrates the", f"{rng.choice(_FESTIVALS)} festival each spring"),
                    fact(c, "holds a yearly feast in honour of", p)]),
            ]
        elif kind == 1:
            p, c, o = people[j], cities[j], orgs[j]
            born = rng.randrange(900, 1800)
            title, sections = p, [
                section(doc_id, "Early life", [
                    fact(p, "was born in", c), fact(p, "was born in the year", born)]),
                section(doc_id, "Career", [
                    fact(p, "worked as", f"a {rng.choice(_OCCUPATIONS)}"),
                    fact(p, "founded", o)]),
                section(doc_id, "Legacy", [
                    fact(p, "died in", born + rng.randrange(30, 90)),
                    fact(p, "left a fortune to", o),
                    fact(p, "is remembered in", f"the {rivers[j]} valley")]),
            ]
        else:
            o, c, p = orgs[j], cities[(j + 1) % n_each], people[j]
            title, sections = o, [
                section(doc_id, "Overview", [
                    fact(o, "is headquartered in", c),
                    fact(o, "produces", rng.choice(_PRODUCTS))]),
                section(doc_id, "History", [
                    fact(o, "was founded by", p),
                    fact(o, "was established in", rng.randrange(1200, 1900))]),
                section(doc_id, "Operations", [
                    fact(o, "employs", f"{rng.randrange(20, 5000)} people"),
                    fact(o, "ships goods along the", f"{rivers[(j + 1) % n_each]} river")]),
            ]
        docs.append({"doc_id": doc_id, "title": title, "sections": sections})
    return docs, facts


def write_world(out_dir: Path, num_documents: int, seed: int) -> dict[str, Any]:
    """Writes ``documents.jsonl`` and ``facts.jsonl`` (ground truth) atomically; returns the paths."""
    docs, facts = build_world(num_documents, seed)
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "documents.jsonl", docs)
    write_jsonl(out_dir / "facts.jsonl", facts)
    return {"documents": str(out_dir / "documents.jsonl"), "facts": str(out_dir / "facts.jsonl"),
            "num_documents": len(docs), "num_facts": len(facts)}
