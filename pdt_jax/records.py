"""The trainer-facing record schema: written by ``data_pipeline`` (export stage), read by the trainer.

One record = one document decomposed into K streams (``stream_1..stream_K``). The trainer turns a
record into K batch rows (streams are batch rows, ARCHITECTURE principle 2), so every per-stream
field is a list of length K in stream order.

Files: ``<work_dir>/export/{train,validation,test}.parquet`` with :data:`RECORD_SCHEMA`, plus
``<work_dir>/export/metadata.json`` holding :class:`PlanHashing` and the counts. Variable-length
lists are stored unpadded; :func:`to_arrays` pads them to fixed shapes for a batch.

Fields (K = streams, P = plan items of this record, S = notes snapshots, V = speculative variants,
M = S - 1 = blocks per stream that a readiness label is given for):

- ``example_id`` str: ``"<sample_id>"`` (unique over all splits).
- ``sample_id`` str, ``split`` str (train | validation | test; the split is by document).
- ``title`` str: the document title.
- ``prompt`` str: the user prompt every stream receives (the student sees it; the reference's export
  dropped it).
- ``document_text`` str: the whole document, sections in order. The KD teacher (D7) reads it.
- ``stream_ids`` list[str] [K]: ``stream_1..stream_K``.
- ``target_text`` list[str] [K]: what stream k must write (its owned sections, headings included).
- ``target_document_offset`` list[int] [K]: where ``target_text[k]`` starts inside ``document_text``
  (``document_text[o:o+len(target_text[k])] == target_text[k]``), so teacher positions (D7) align
  with student positions.
- ``label_spans`` list[list[list[int]]] [K][n_k][2]: half-open character spans of ``target_text[k]``
  that the LM loss covers. With ``sectional_independence`` each stream is supervised only on its own
  section; the trainer maps the spans to token masks through the tokenizer's offsets.
- ``sectional_independence`` bool.
- ``plan_item_text`` list[str] [P]: canonical plan-item texts (:func:`canonical_plan_text`).
- ``plan_item_ids`` list[int] [P]: :func:`plan_item_id` of each text, in ``[1, plan_vocab_size)``;
  0 is the null slot and never appears here.
- ``plan_item_stream`` list[int] [P]: 0-based index of the stream that owns the item.
- ``coverage_targets`` list[float] [P]: 1.0 covered, 0.5 partial, 0.0 missing (owner stream's notes).
- ``coverage_mask`` list[bool] [P]: False where the coverage came with ``hint`` provenance, which is
  carried through but must not enter the coverage loss or metrics.
- ``notes_text`` list[list[str]] [S][K]: teacher notes of stream k as visible at snapshot s, rendered
  as text (:func:`render_notes`). Snapshot 0 is the plan contract; 1..M are teacher notes revealed
  as stream k's text advances. The trainer embeds these texts with the frozen trunk (D6).
- ``snapshot_source`` list[str] [S]: ``plan_contract`` for s = 0, then ``teacher_true``.
- ``snapshot_cursor`` list[list[int]] [S][K]: character cursor in ``target_text[k]`` up to which
  snapshot s reveals notes (0 for snapshot 0).
- ``speculative_notes_text`` list[list[str]] [V][K]: degraded notes (student-side variants).
- ``readiness_labels`` list[list[int]] [K][M]: 1 when block m of stream k (text between cursors
  m and m+1) only mentions entities already visible on the bus under lag Δ, else 0. Derived from the
  data, never random. (Snapshot granularity; the trainer's per-τ-token labels are
  :func:`block_labels`, from the three fields below.)
- ``lag`` int: Δ used to derive the readiness labels (in snapshots).
- ``entity_names`` list[str] [E]: every entity of the document's notes (and plan contract).
- ``entity_mentions`` list[list[list[int]]] [K][n_k][3]: ``(start, end, entity)`` of every mention
  (name or alias, whole word) of an entity in ``target_text[k]``, by start.
- ``entity_references`` list[list[list[int]]] [K][r_k][3]: ``(start, end, entity)`` of every sentence
  of ``target_text[k]`` that names an entity: what a block writing part of that sentence depends on.
- ``planned_entities`` list[int]: entities the plan contract (snapshot 0) announces: on the bus
  from the start.
- ``plan_item_span`` list[list[int]] [P][2]: the character span, in its owner stream's
  ``target_text``, of the section that covers the item.
- ``notes_schema_version`` str: ``"2.0"``.
- ``notes_json`` str: the full notes artefact (schema 2.0) as JSON, for tools and audits.
- ``plan_vocab_size``, ``plan_hash_buckets`` int, ``plan_hash_salt`` str: hashing metadata (D5),
  repeated per record so a record never travels without it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

NOTES_SCHEMA_VERSION = "2.0"
RECORD_SCHEMA_VERSION = "2.0"
SPLITS = ("train", "validation", "test")


def stream_name(index: int) -> str:
    """0-based stream index -> ``stream_{index+1}`` (the one naming used everywhere)."""
    return f"stream_{index + 1}"


@dataclasses.dataclass(frozen=True)
class PlanHashing:
    """D5 hashing metadata; artefacts whose metadata differ must never be mixed."""

    plan_vocab_size: int = 65536
    plan_hash_buckets: int = 65536
    plan_hash_salt: str = "pdt-plan-v1"

    def __post_init__(self):
        if not 2 <= self.plan_hash_buckets <= self.plan_vocab_size:
            raise ValueError(
                f"need 2 <= plan_hash_buckets ({self.plan_hash_buckets}) <= plan_vocab_size "
                f"({self.plan_vocab_size})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_matches(self, other: "PlanHashing") -> None:
        if self != other:
            raise ValueError(f"plan hashing metadata differ: {self} vs {other}")


_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def canonical_plan_text(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form of a plan item.

    Ids are hashed from this form only (no stream label, no character offsets), so the same topic
    gets the same id in every document: that is what makes planner targets learnable.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", folded).split())


def plan_item_id(text: str, hashing: PlanHashing) -> int:
    """Salted SHA-256 of the canonical text -> id in ``[1, plan_hash_buckets)``; 0 is the null slot."""
    canonical = canonical_plan_text(text)
    if not canonical:
        raise ValueError(f"plan item {text!r} is empty after canonicalisation")
    digest = hashlib.sha256(f"{hashing.plan_hash_salt}::{canonical}".encode("utf-8")).digest()
    return 1 + int.from_bytes(digest[:8], "big") % (hashing.plan_hash_buckets - 1)


def render_notes(notes: Mapping[str, Any]) -> str:
    """One stream's schema-2.0 notes as the text the trunk embeds (D6). Deterministic order."""
    names = {e["id"]: e["name"] for e in notes.get("ENT", [])}
    lines = []
    for ent in notes.get("ENT", []):
        aliases = ", ".join(ent.get("aliases", []))
        lines.append(f"ENT {ent['name']} ({ent['type']})" + (f" aka {aliases}" if aliases else ""))
    for fact in notes.get("FACT", []):
        subj = names.get(fact["subj_id"], fact["subj_id"])
        lines.append(f"FACT {subj} | {fact['predicate']} | {fact['object']}")
    for cov in notes.get("COVERAGE", []):
        lines.append(f"COVERAGE {cov['plan_item_id']}: {cov['status']}")
    return "\n".join(lines)


_STR_LIST = pa.list_(pa.string())
_INT_LIST = pa.list_(pa.int64())

RECORD_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("sample_id", pa.string()),
    ("split", pa.string()),
    ("title", pa.string()),
    ("prompt", pa.string()),
    ("document_text", pa.string()),
    ("stream_ids", _STR_LIST),
    ("target_text", _STR_LIST),
    ("target_document_offset", _INT_LIST),
    ("label_spans", pa.list_(pa.list_(_INT_LIST))),
    ("sectional_independence", pa.bool_()),
    ("plan_item_text", _STR_LIST),
    ("plan_item_ids", _INT_LIST),
    ("plan_item_stream", _INT_LIST),
    ("coverage_targets", pa.list_(pa.float32())),
    ("coverage_mask", pa.list_(pa.bool_())),
    ("notes_text", pa.list_(_STR_LIST)),
    ("snapshot_source", _STR_LIST),
    ("snapshot_cursor", pa.list_(_INT_LIST)),
    ("speculative_notes_text", pa.list_(_STR_LIST)),
    ("readiness_labels", pa.list_(_INT_LIST)),
    ("lag", pa.int64()),
    ("notes_schema_version", pa.string()),
    ("notes_json", pa.string()),
    ("entity_names", _STR_LIST),
    ("entity_mentions", pa.list_(pa.list_(_INT_LIST))),
    ("entity_references", pa.list_(pa.list_(_INT_LIST))),
    ("planned_entities", _INT_LIST),
    ("plan_item_span", pa.list_(_INT_LIST)),
    ("plan_vocab_size", pa.int64()),
    ("plan_hash_buckets", pa.int64()),
    ("plan_hash_salt", pa.string()),
], metadata={"pdt_record_schema_version": RECORD_SCHEMA_VERSION})


def validate_record(record: Mapping[str, Any]) -> None:
    """Checks the cross-field invariants the trainer relies on; raises ValueError naming the field."""
    ex = record.get("example_id", "?")

    def fail(msg):
        raise ValueError(f"record {ex}: {msg}")

    missing = [f for f in RECORD_SCHEMA.names if f not in record]
    if missing:
        fail(f"missing fields {missing}")
    k = len(record["stream_ids"])
    if record["stream_ids"] != [stream_name(i) for i in range(k)]:
        fail(f"stream_ids must be stream_1..stream_{k}, got {record['stream_ids']}")
    for field in ("target_text", "target_document_offset", "label_spans", "readiness_labels"):
        if len(record[field]) != k:
            fail(f"{field} has {len(record[field])} entries for {k} streams")
    doc = record["document_text"]
    for i, (text, off) in enumerate(zip(record["target_text"], record["target_document_offset"])):
        if doc[off:off + len(text)] != text:
            fail(f"target_text[{i}] is not document_text[{off}:{off + len(text)}]")
        for start, end in record["label_spans"][i]:
            if not 0 <= start < end <= len(text):
                fail(f"label span {(start, end)} outside target_text[{i}]")
    p = len(record["plan_item_text"])
    for field in ("plan_item_ids", "plan_item_stream", "coverage_targets", "coverage_mask"):
        if len(record[field]) != p:
            fail(f"{field} has {len(record[field])} entries for {p} plan items")
    hashing = PlanHashing(record["plan_vocab_size"], record["plan_hash_buckets"],
                          record["plan_hash_salt"])
    for text, pid in zip(record["plan_item_text"], record["plan_item_ids"]):
        if pid != plan_item_id(text, hashing):
            fail(f"plan item {text!r} has id {pid}, expected {plan_item_id(text, hashing)}")
    if any(not 0 <= s < k for s in record["plan_item_stream"]):
        fail("plan_item_stream out of range")
    s = len(record["notes_text"])
    if s < 2 or any(len(row) != k for row in record["notes_text"]):
        fail("notes_text must be [S>=2][K]")
    if len(record["snapshot_source"]) != s or len(record["snapshot_cursor"]) != s:
        fail("snapshot_source/snapshot_cursor must have S entries")
    if any(len(row) != s - 1 for row in record["readiness_labels"]):
        fail("readiness_labels must be [K][S-1]")
    if any(v not in (0, 1) for row in record["readiness_labels"] for v in row):
        fail("readiness_labels must be 0/1")
    e = len(record["entity_names"])
    for field in ("entity_mentions", "entity_references"):
        if len(record[field]) != k:
            fail(f"{field} has {len(record[field])} entries for {k} streams")
        for i, (text, spans) in enumerate(zip(record["target_text"], record[field])):
            for start, end, ent in spans:
                if not (0 <= start < end <= len(text) and 0 <= ent < e):
                    fail(f"{field} entry {(start, end, ent)} outside target_text[{i}] or entity_names")
    if any(not 0 <= x < e for x in record["planned_entities"]):
        fail("planned_entities out of range")
    if len(record["plan_item_span"]) != p:
        fail(f"plan_item_span has {len(record['plan_item_span'])} entries for {p} plan items")
    for (start, end), owner in zip(record["plan_item_span"], record["plan_item_stream"]):
        if not 0 <= start < end <= len(record["target_text"][owner]):
            fail(f"plan_item_span {(start, end)} outside target_text[{owner}]")


def to_arrays(record: Mapping[str, Any], plan_slots: int) -> dict[str, np.ndarray]:
    """Fixed-shape numpy views of the numeric fields, padded for batching.

    Returns ``plan_item_ids_P`` int32 [plan_slots] (0 = null slot), ``plan_item_stream_P`` int32
    (-1 on padding), ``plan_item_mask_P`` bool, ``coverage_targets_P`` float32,
    ``coverage_mask_P`` bool (False on padding and on hint items), ``readiness_labels_KxM`` int32.
    """
    p = len(record["plan_item_ids"])
    if p > plan_slots:
        raise ValueError(f"record {record['example_id']}: {p} plan items > plan_slots={plan_slots}")
    out = {
        "plan_item_ids_P": np.zeros(plan_slots, np.int32),
        "plan_item_stream_P": np.full(plan_slots, -1, np.int32),
        "plan_item_mask_P": np.zeros(plan_slots, bool),
        "coverage_targets_P": np.zeros(plan_slots, np.float32),
        "coverage_mask_P": np.zeros(plan_slots, bool),
    }
    out["plan_item_ids_P"][:p] = record["plan_item_ids"]
    out["plan_item_stream_P"][:p] = record["plan_item_stream"]
    out["plan_item_mask_P"][:p] = True
    out["coverage_targets_P"][:p] = record["coverage_targets"]
    out["coverage_mask_P"][:p] = record["coverage_mask"]
    out["readiness_labels_KxM"] = np.asarray(record["readiness_labels"], np.int32)
    return out


def block_char_ranges(token_spans: Sequence[Sequence[int]], tau: int, length: int) -> list[tuple[int, int]]:
    """Blocks of ``tau`` tokens as character ranges of the text: block m covers tokens
    [mτ, (m+1)τ) and runs from the first one's start to the next block's first start (the last
    block to ``length``), so every character belongs to exactly one block."""
    starts = [int(token_spans[i][0]) for i in range(0, len(token_spans), tau)]
    return [(a, b) for a, b in zip(starts, starts[1:] + [length])]


_NUMBER = re.compile(r"\d+")


def first_mentions(record: Mapping[str, Any]) -> dict[int, tuple[int, int]]:
    """entity -> (its introducer: the first stream in document order that mentions it, the start
    of that mention in the introducer's ``target_text``)."""
    out: dict[int, tuple[int, int]] = {}
    for k, mentions in enumerate(record["entity_mentions"]):
        for start, _, ent in mentions:
            out.setdefault(ent, (k, start))
    return out


def shared_spans(record: Mapping[str, Any]) -> list[list[tuple[int, int]]]:
    """Per stream, the character spans of ``target_text[k]`` that restate what a sibling stream
    introduced — what only the bus can tell a parallel stream (the ``shared`` loss term scores
    them on their own; README "Training"):

    * mentions (``entity_mentions``) of an entity whose introducer (:func:`first_mentions`, as in
      :func:`block_labels`) is another stream, unless the plan
      contract announces it (``planned_entities``: every stream knows it from the start);
    * numbers (maximal digit runs) that an earlier stream in document order already wrote.

    Spans are sorted by start and may be empty for a stream (e.g. the first one)."""
    texts = record["target_text"]
    planned = set(record["planned_entities"])
    first = first_mentions(record)
    out, seen_numbers = [], set()
    for k, text in enumerate(texts):
        spans = [(a, b) for a, b, ent in record["entity_mentions"][k] if ent not in planned and first[ent][0] != k]
        numbers = list(_NUMBER.finditer(text))
        spans += [m.span() for m in numbers if m.group() in seen_numbers]
        seen_numbers |= {m.group() for m in numbers}
        out.append(sorted(set(spans)))
    return out


def block_labels(record: Mapping[str, Any], token_spans: Sequence[Sequence[Sequence[int]]], tau: int,
                 lag: int) -> tuple[list[list[int]], list[list[list[float]]]]:
    """The readiness and coverage labels of every block of τ tokens of every stream — what the bus
    carries when the runtime decodes that block under lag Δ.

    ``token_spans[k]``: (start, end) in ``target_text[k]`` of each target token of stream k, from
    the tokenizer's offsets. Block m of stream k is decoded at round m, when a sibling's note of its
    block u is visible iff u + 1 ≤ m − Δ (stamp u + 1). Returns:

    * readiness [K][U_k] (0/1): 1 iff every entity that a sentence overlapping the block refers to
      (``entity_references``) is announced by the plan contract, or is the stream's own — introduced
      by it: an entity's introducer is the first stream in document order that mentions it, as a
      sequential writer introduces it — or its introducer's first mention lies in a block u with
      u + 1 ≤ m − Δ;
    * coverage [K][U_k][P] (0, 0.5, 1): for each plan item, 0 if another stream owns it (a negative)
      or the stream's text up to the block's end has not reached the item's section, 1 once it has
      passed the section's end, 0.5 inside it.
    """
    texts = record["target_text"]
    K = len(texts)
    blocks = [block_char_ranges(token_spans[k], tau, len(texts[k])) for k in range(K)]

    def block_of(k: int, offset: int) -> int:
        return next(i for i, (a, b) in enumerate(blocks[k]) if offset < b) if blocks[k] else 0

    planned = set(record["planned_entities"])
    # entity -> (introducer, block of its first mention there)
    introduced = {ent: (k, block_of(k, start)) for ent, (k, start) in first_mentions(record).items()}
    readiness = []
    for k in range(K):
        row = []
        for m, (a, b) in enumerate(blocks[k]):
            ok = True
            for start, end, ent in record["entity_references"][k]:
                if not (start < b and end > a) or ent in planned:
                    continue
                owner, u = introduced[ent]
                if owner != k and not u + 1 <= m - lag:
                    ok = False
                    break
            row.append(int(ok))
        readiness.append(row)
    coverage = []
    for k in range(K):
        per_block = []
        for _, end in blocks[k]:
            targets = []
            for (s0, s1), owner in zip(record["plan_item_span"], record["plan_item_stream"]):
                targets.append(0.0 if owner != k or end <= s0 else 1.0 if end >= s1 else 0.5)
            per_block.append(targets)
        coverage.append(per_block)
    return readiness, coverage


class RecordSource:
    """Random-access view of one split file; satisfies grain's ``RandomAccessDataSource`` protocol.

    The table is opened lazily (memory-mapped) and dropped when pickled, so grain workers reopen it.
    """

    def __init__(self, path: str):
        self._path = str(path)
        self._table = None

    def _open(self):
        if self._table is None:
            self._table = read_records(self._path)
        return self._table

    def __len__(self) -> int:
        return self._open().num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._open().slice(int(index), 1).to_pylist()[0]

    def __getstate__(self):
        return {"_path": self._path, "_table": None}

    def __repr__(self) -> str:
        return f"RecordSource({self._path!r})"


def read_records(path: str) -> pa.Table:
    """One split file as a table with exactly :data:`RECORD_SCHEMA` (refuses other versions)."""
    import pyarrow.parquet as pq
    table = pq.read_table(str(path), memory_map=True)
    meta = table.schema.metadata or {}
    if meta.get(b"pdt_record_schema_version") != RECORD_SCHEMA_VERSION.encode():
        raise ValueError(f"{path}: not a PDT record file of schema {RECORD_SCHEMA_VERSION}")
    # Parquet round trips may rename list children ("item" vs "element"); cast restores ours
    return table.cast(RECORD_SCHEMA)


def read_hashing(metadata_path: str) -> PlanHashing:
    """The :class:`PlanHashing` of an export directory's ``metadata.json``."""
    with open(metadata_path, encoding="utf-8") as f:
        return PlanHashing(**json.load(f)["plan_hashing"])


def records_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Validated records -> an Arrow table with :data:`RECORD_SCHEMA`."""
    for r in records:
        validate_record(r)
    return pa.Table.from_pylist(list(records), schema=RECORD_SCHEMA)
