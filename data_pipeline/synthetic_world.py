"""A synthetic world: encyclopedic documents about invented entities, with ground-truth facts.

Names are built from syllables, so no fact can be known from pretraining: a model that states one
has read it from the document or the notes bus.

Variety, so that plans and labels can be learned rather than memorised:
  * eight kinds of subject (city, person, company, river, ship, school, festival, mountain), each
    with a pool of section kinds; a document draws its own subset (in the kind's order), so plans
    differ in length and content from document to document;
  * each document has three to five supporting entities (people, places, firms), each introduced by
    one section ("Ardis Quell founded Velmora in 1201.") and reused by others with probability
    ``reference_rate`` per section, at a random sentence position — the cross-stream dependencies
    the readiness labels measure: a stream that writes a name its sibling introduces needs that
    sibling's note first. Later sections may refer back, and earlier ones forward.

Every sentence is a fact ``<subject> <predicate> <object>.`` whose subject opens the sentence (the
procedural teacher recovers all of them). Everything derives from ``seed``.
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
_CRAFTS = ["salt mining", "glassmaking", "river trade", "wool weaving", "shipbuilding", "copper smelting",
           "tea growing", "clockmaking", "bell casting", "paper milling"]
_JOBS = ["cartographer", "engineer", "merchant", "physician", "astronomer", "architect", "composer", "botanist"]
_GOODS = ["copper wire", "glass lenses", "river barges", "woollen cloth", "pocket clocks", "printed maps",
          "dyed silk", "iron bells"]
_SEASONS = ["spring", "summer", "autumn", "winter"]
_REGIONS = ["northern", "southern", "eastern", "western", "central"]
_TERRAIN = ["highlands", "lowlands", "marshes", "plains", "valleys", "hills"]

# Each kind: its title builder and its section kinds in document order, each a list of sentence
# templates (predicate, object); {n}, {y}, {c}, {j}, {g}, {s}, {r}, {t} draw numbers and words.
KINDS: dict[str, dict[str, Any]] = {
    "city": {"title": "place", "sections": {
        "Overview": [("is a city in the", "{r} {t}"), ("has a population of", "{n}")],
        "History": [("was founded in", "{y}"), ("was rebuilt after a fire in", "{y}")],
        "Geography": [("lies at an elevation of", "{n} metres"), ("spreads along", "{n} bridges")],
        "Economy": [("is known for", "{c}"), ("exports", "{g}")],
        "Culture": [("celebrates a lantern festival each", "{s}"), ("keeps a library of", "{n} books")],
        "Transport": [("is served by", "{n} ferries"), ("opened a railway in", "{y}")],
        "Government": [("is governed by a council of", "{n} members"), ("granted a charter in", "{y}")]}},
    "person": {"title": "person", "sections": {
        "Early life": [("was born in the year", "{y}"), ("grew up among", "{n} siblings")],
        "Education": [("studied for", "{n} years"), ("trained as a", "{j}")],
        "Career": [("worked as a", "{j}"), ("built", "{n} workshops")],
        "Works": [("wrote", "{n} treatises"), ("designed", "{n} instruments")],
        "Family": [("married in", "{y}"), ("raised", "{n} children")],
        "Legacy": [("died in", "{y}"), ("is remembered each", "{s}")]}},
    "company": {"title": "firm", "sections": {
        "Overview": [("produces", "{g}"), ("employs", "{n} people")],
        "History": [("was established in", "{y}"), ("survived a flood in", "{y}")],
        "Products": [("sells", "{g}"), ("patented a process in", "{y}")],
        "Operations": [("runs", "{n} warehouses"), ("ships goods each", "{s}")],
        "Ownership": [("issued", "{n} shares"), ("was reorganised in", "{y}")],
        "Controversies": [("paid a fine of", "{n} crowns"), ("lost a lawsuit in", "{y}")]}},
    "river": {"title": "place", "sections": {
        "Course": [("runs for", "{n} kilometres"), ("rises in the", "{r} {t}")],
        "Tributaries": [("is fed by", "{n} streams"), ("floods each", "{s}")],
        "Ecology": [("shelters", "{n} species of fish"), ("freezes in", "{s}")],
        "Navigation": [("carries", "{g}"), ("was dredged in", "{y}")],
        "Bridges": [("is crossed by", "{n} bridges"), ("gained a stone bridge in", "{y}")]}},
    "ship": {"title": "vessel", "sections": {
        "Construction": [("was launched in", "{y}"), ("measures", "{n} metres")],
        "Service": [("carried", "{g}"), ("sailed for", "{n} years")],
        "Voyages": [("made", "{n} voyages"), ("crossed the sea in", "{y}")],
        "Crew": [("needed a crew of", "{n} sailors"), ("lost a mast in", "{y}")],
        "Fate": [("was broken up in", "{y}"), ("rests in", "{n} metres of water")]}},
    "school": {"title": "institute", "sections": {
        "Overview": [("teaches", "{n} students"), ("is known for", "{c}")],
        "History": [("opened in", "{y}"), ("moved to a new hall in", "{y}")],
        "Campus": [("covers", "{n} hectares"), ("keeps", "{n} laboratories")],
        "Academics": [("offers", "{n} courses"), ("trains students as", "{j}s")],
        "Alumni": [("counts", "{n} graduates"), ("honours alumni each", "{s}")]}},
    "festival": {"title": "event", "sections": {
        "Origins": [("began in", "{y}"), ("was first held by", "{n} guilds")],
        "Customs": [("lights", "{n} lanterns"), ("is held each", "{s}")],
        "Music": [("features", "{n} bands"), ("commissions songs about", "{c}")],
        "Food": [("serves", "{n} dishes"), ("is famous for", "{g}")],
        "Attendance": [("draws", "{n} visitors"), ("was cancelled in", "{y}")]}},
    "mountain": {"title": "place", "sections": {
        "Geography": [("rises to", "{n} metres"), ("stands in the", "{r} {t}")],
        "Geology": [("formed over", "{n} million years"), ("holds seams of", "{c}")],
        "Climbing": [("was first climbed in", "{y}"), ("has", "{n} routes")],
        "Wildlife": [("shelters", "{n} species of birds"), ("is snowbound each", "{s}")],
        "Legends": [("inspired", "{n} songs"), ("appears in a chronicle of", "{y}")]}},
}

# How a supporting entity is introduced (its first sentence) and reused (later ones).
_SUPPORT = {
    "person": ([("founded", "{T} in {y}"), ("was the first patron of", "{T}")],
               [("also praised", "{T}"), ("visited {T} in", "{y}"), ("wrote a letter about", "{T}"),
                ("left a gift to", "{T}")]),
    "place": ([("lies near", "{T}"), ("was granted to", "{T} in {y}")],
              [("still trades with", "{T}"), ("sent envoys to {T} in", "{y}"), ("shares a road with", "{T}")]),
    "firm": ([("supplied", "{T} from {y}"), ("opened an office beside", "{T}")],
             [("still supplies", "{T}"), ("sponsored a hall for", "{T}"), ("lent money to", "{T}")]),
}


class _Namer:
    def __init__(self, rng: random.Random):
        self._rng, self._used = rng, set()

    def reserve(self, names) -> None:
        """Names that ``word`` must never return (drawn elsewhere)."""
        self._used.update(names)

    def word(self, syllables: int) -> str:
        while True:
            w = "".join(self._rng.choice(_ONSETS) + self._rng.choice(_VOWELS) +
                        self._rng.choice(_CODAS) for _ in range(syllables)).capitalize()
            if w not in self._used:
                self._used.add(w)
                return w

    def name(self, kind: str) -> str:
        if kind == "person":
            return f"{self.word(2)} {self.word(2)}"
        if kind == "firm":
            return f"{self.word(2)} {self._rng.choice(['Works', 'Guild', 'Company'])}"
        if kind == "vessel":
            return f"{self.word(2)} {self._rng.choice(['Star', 'Queen', 'Wind'])}"
        if kind == "institute":
            return f"{self.word(2)} {self._rng.choice(['Academy', 'College', 'School'])}"
        if kind == "event":
            return f"{self.word(2)} {self._rng.choice(['Fair', 'Feast', 'Games'])}"
        return self.word(2)


def build_world(num_documents: int, seed: int, reference_rate: float = 0.7) -> tuple[list[dict], list[dict]]:
    """Returns (documents, ground-truth facts)."""
    rng = random.Random(seed)
    namer = _Namer(rng)
    kinds = list(KINDS)
    docs, facts = [], []

    def fill(template: str, title: str) -> str:
        return template.format(
            n=rng.randrange(2, 900), y=rng.randrange(900, 1900), c=rng.choice(_CRAFTS), j=rng.choice(_JOBS),
            g=rng.choice(_GOODS), s=rng.choice(_SEASONS), r=rng.choice(_REGIONS), t=rng.choice(_TERRAIN),
            T=title)

    for i in range(num_documents):
        kind = kinds[i % len(kinds)]
        spec = KINDS[kind]
        doc_id = f"synth-{i:05d}"
        title = namer.name(spec["title"])
        pool = list(spec["sections"])
        chosen = sorted(rng.sample(range(len(pool)), rng.randrange(3, min(len(pool), 6) + 1)))
        headings = [pool[j] for j in chosen]
        sentences: list[list[tuple[str, str, str]]] = [
            [(title, pred, fill(obj, title)) for pred, obj in rng.sample(spec["sections"][h], 2)] for h in headings]
        # Supporting entities: introduced by one section, reused by others at random positions.
        for _ in range(rng.randrange(3, 6)):
            support = rng.choice(list(_SUPPORT))
            name = namer.name(support)
            intro, reuse = _SUPPORT[support]
            home = rng.randrange(len(headings))
            pred, obj = rng.choice(intro)
            sentences[home].insert(rng.randrange(len(sentences[home]) + 1), (name, pred, fill(obj, title)))
            for other in range(len(headings)):
                if other != home and rng.random() < reference_rate:
                    pred, obj = rng.choice(reuse)
                    sentences[other].insert(rng.randrange(len(sentences[other]) + 1), (name, pred, fill(obj, title)))
        sections = []
        for heading, sents in zip(headings, sentences):
            texts = []
            for subj, pred, obj in sents:
                sentence = f"{subj} {pred} {obj}."
                texts.append(sentence)
                facts.append({"doc_id": doc_id, "section": heading, "subject": subj, "predicate": pred,
                              "object": obj, "sentence": sentence})
            sections.append({"heading": heading, "text": " ".join(texts)})
        docs.append({"doc_id": doc_id, "title": title, "kind": kind, "sections": sections})
    return docs, facts


def write_world(out_dir: Path, num_documents: int, seed: int) -> dict[str, Any]:
    """Writes ``documents.jsonl`` and ``facts.jsonl`` (ground truth) atomically; returns the paths."""
    docs, facts = build_world(num_documents, seed)
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "documents.jsonl", docs)
    write_jsonl(out_dir / "facts.jsonl", facts)
    return {"documents": str(out_dir / "documents.jsonl"), "facts": str(out_dir / "facts.jsonl"),
            "num_documents": len(docs), "num_facts": len(facts)}
