"""Deterministic, dictionary-free extraction used by the procedural teacher.

Entities are runs of capitalised words that are not sentence-opening function words; a fact is a
sentence that opens with an entity: ``<subject> <predicate up to its first preposition> <object>``.
Crude on open text, exact on the synthetic world's sentences, and always reproducible.
"""
from __future__ import annotations

import re
from typing import Iterator

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:[ \t]+[A-Z][\w'-]*)*")  # never across a line break
_OPENERS = {"The", "A", "An", "It", "Its", "In", "On", "This", "That", "These", "Those", "He",
            "She", "They", "His", "Her", "Their", "After", "Before", "During", "As", "At", "By",
            "For", "From", "Of", "With", "When", "While", "Since", "There", "Overview", "History"}
_PREPOSITIONS = {"in", "on", "by", "of", "as", "for", "at", "to", "from", "with", "into", "along"}


def sentences(text: str) -> Iterator[tuple[int, int]]:
    """[start, end) of each sentence, whitespace trimmed."""
    for m in _SENTENCE.finditer(text):
        start, end = m.start(), m.end()
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            yield start, end


def entity_mentions(text: str) -> Iterator[tuple[str, int]]:
    """(name, offset) of every capitalised run, with leading function words dropped."""
    for m in _NAME.finditer(text):
        words = m.group(0).split()
        skipped = 0
        while words and words[0] in _OPENERS:
            skipped += 1
            words = words[1:]
        if words and not words[0].isdigit():
            name = " ".join(words)
            offset = m.start() + len(" ".join(m.group(0).split()[:skipped])) + (1 if skipped else 0)
            yield name, offset


def split_fact(sentence: str, subject: str) -> tuple[str, str] | None:
    """(predicate, object) of a sentence that starts with ``subject``, or None."""
    if not sentence.startswith(subject):
        return None
    words = sentence[len(subject):].strip().rstrip(".!?").split()
    if len(words) < 2:
        return None
    cut = 1
    for i, w in enumerate(words[:5]):
        if w.lower() in _PREPOSITIONS:
            cut = i + 1
            # "the banks of the X river": keep a trailing article with the predicate
            if cut < len(words) - 1 and words[cut].lower() in {"the", "a", "an"}:
                cut += 1
            break
    if cut >= len(words):
        cut = len(words) - 1
    return " ".join(words[:cut]), " ".join(words[cut:])
