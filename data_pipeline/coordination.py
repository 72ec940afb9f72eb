"""The coordination task (``make demo``): three-part articles whose parts must agree on facts the
prompt does not fix, and must not repeat each other's facts. Ground truth is exact, so
``pdt_jax.evaluation.score`` measures consistency, contradictions, redundancy and coverage
without any NLI model.

Every article is about an invented town ``T`` (the prompt names it and nothing else) and has three
sections, one per stream:

    Founding  T was founded by F in Y.  T lies in the <region> <terrain>.  T has a population of N.
    Trade     <detail>.  <detail>.  F built the first market of T.
    Legacy    T celebrates a festival each <season>.  <detail>.  <detail>.  T has honoured F since Y.

* **Shared facts** — the founder ``F`` (a person from a small pool of invented names) and the
  founding year ``Y`` (from a small pool of years): *Founding* introduces them in its first
  sentence; *Trade* must reuse ``F`` and *Legacy* ``F`` and ``Y``, late in their text. Nothing but
  the Founding stream's notes tells a parallel stream which founder and year this article has.
* **Must-not-repeat facts** — four details about ``T`` (exports, craft, ferries, library); each
  article gives two to *Trade* (its first two sentences) and the other two to *Legacy*, drawn at
  random: a Legacy stream that does not know which two Trade wrote repeats one half the time.

The pools are small so that a tiny model can carry a founder through a latent note; they are drawn
from the world's seed (names built from syllables: nothing is known before training).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from data_pipeline.storage import write_json, write_jsonl
from data_pipeline.synthetic_world import _CRAFTS, _GOODS, _REGIONS, _SEASONS, _TERRAIN, _Namer

VERSION = 2   # of the documents and ground-truth format: a dataset built under another is rebuilt
HEADINGS = ("Founding", "Trade", "Legacy")
# predicate key -> sentence template; {T} town, {F} founder, {Y} year, other fields drawn per fact.
TEMPLATES = {
    "founded": "{T} was founded by {F} in {Y}.",
    "lies": "{T} lies in the {r} {t}.",
    "population": "{T} has a population of {n}.",
    "exports": "{T} exports {g}.",
    "craft": "{T} is known for {c}.",
    "ferries": "{T} is served by {n} ferries.",
    "library": "{T} keeps a library of {n} books.",
    "market": "{F} built the first market of {T}.",
    "festival": "{T} celebrates a festival each {s}.",
    "honoured": "{T} has honoured {F} since {Y}.",
}
DETAILS = ("exports", "craft", "ferries", "library")
# The phrase that identifies each predicate in generated text (what score() looks for).
PHRASES = {
    "founded": " was founded by ", "lies": " lies in the ", "population": " has a population of ",
    "exports": " exports ", "craft": " is known for ", "ferries": " is served by ", "library": " keeps a library of ",
    "market": " built the first market of ", "festival": " celebrates a festival each ", "honoured": " has honoured ",
}
# Where each shared fact is introduced and reused: [part, the predicate of the sentence that states it].
SHARED = {"founder": {"intro": [0, "founded"], "reused_by": [[1, "market"], [2, "honoured"]]},
          "year": {"intro": [0, "founded"], "reused_by": [[2, "honoured"]]}}


def pools(seed: int, founders: int = 8, years: int = 8) -> dict[str, list]:
    rng = random.Random(f"coordination-pools-{seed}")
    namer = _Namer(rng)
    return {"founder": [namer.word(2) for _ in range(founders)],
            "year": sorted(rng.sample(range(1100, 1900), years))}


def build(num_documents: int, seed: int, founders: int = 8, years: int = 8) -> tuple[list[dict], dict]:
    """(documents, ground truth). Ground truth: the pools, the templates, and per document its
    title, founder, year and each part's planned predicates."""
    if num_documents < 1:
        raise ValueError(f"coordination: num_documents must be >= 1, found {num_documents}")
    p = pools(seed, founders, years)
    rng = random.Random(f"coordination-docs-{seed}")
    namer = _Namer(random.Random(f"coordination-titles-{seed}"))
    namer.reserve(p["founder"])   # titles never collide with founders
    docs, truth = [], {}
    for i in range(num_documents):
        title, founder, year = namer.word(2), rng.choice(p["founder"]), rng.choice(p["year"])
        details = list(DETAILS)
        rng.shuffle(details)
        parts = [["founded", "lies", "population"], details[:2] + ["market"], ["festival"] + details[2:] + ["honoured"]]
        sections = []
        for heading, keys in zip(HEADINGS, parts):
            text = " ".join(TEMPLATES[k].format(
                T=title, F=founder, Y=year, n=rng.randrange(12, 99), r=rng.choice(_REGIONS), t=rng.choice(_TERRAIN),
                g=rng.choice(_GOODS), c=rng.choice(_CRAFTS), s=rng.choice(_SEASONS)) for k in keys)
            sections.append({"heading": heading, "text": text})
        doc_id = f"coord-{i:05d}"
        docs.append({"doc_id": doc_id, "title": title, "kind": "town", "sections": sections})
        truth[doc_id] = {"title": title, "founder": founder, "year": year, "parts": parts}
    return docs, {"task": "coordination", "version": VERSION, "seed": seed, "headings": list(HEADINGS), "pools": p,
                  "phrases": PHRASES, "shared": SHARED, "details": list(DETAILS), "documents": truth}


def write(out_dir: Path, num_documents: int, seed: int) -> dict[str, Any]:
    """``documents.jsonl`` and ``coordination_truth.json`` (ground truth), atomically."""
    docs, truth = build(num_documents, seed)
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "documents.jsonl", docs)
    write_json(out_dir / "coordination_truth.json", truth)
    return {"documents": str(out_dir / "documents.jsonl"), "truth": str(out_dir / "coordination_truth.json"),
            "num_documents": len(docs)}
