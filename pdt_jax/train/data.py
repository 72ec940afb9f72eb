"""The training input pipeline: export records → K rows per record → padded, bucketed batches.

A record (``pdt_jax/records.py``) becomes K rows, one per stream (streams are batch rows):

    row k = prompt (harmony-rendered, the stream's prefix if any) + target_text[k] tokens + EOS

and, per row, everything the losses need, at the granularity the trainer works at:

* ``label_mask`` [T]: target tokens whose characters overlap ``label_spans[k]`` (section masks),
  plus the EOS the stream must learn to write; ``shared_mask`` [T]: the supervised tokens that
  restate what a sibling stream introduced (``records.shared_spans``: the ``shared`` loss term);
* ``readiness`` [U], ``coverage`` [U, S] and ``block_mask`` [U]: ``records.block_labels`` at
  blocks of τ tokens under lag Δ (what the bus carries when the runtime decodes that block);
  ``readiness_retry`` [U]: the same labels at horizon v + 1 − Δ (lag Δ − 1), what the bus carries
  when the stream retries block v (the runtime's retry reads round v + 1's window);
* ``teacher_notes`` [U, N]: the trunk-embedded teacher note each block reads
  (``teacher_notes.block_teacher_notes``, cached once per trunk and dataset, D6);
* the KD teacher's row (D7): the same prompt, then the document text that precedes the stream's
  target (``target_document_offset``; the last ``kd_context`` tokens of it), then the same target
  tokens — so teacher and student positions align token for token (``kd_index``); for trunk
  pretraining (``RowSpec.article``) instead the whole article once, every stream's positions
  mapped into it.

Batches are padded to the smallest of a few fixed lengths (``buckets``: one compile each); a row
longer than the largest bucket keeps its prompt and loses the end of its target (counted in
``truncated``). grain reads the Parquet split, shuffles it (reshuffled every epoch), shards it by
process, and its iterator state goes into every checkpoint (a resumed run sees the same next batch).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import grain
import jax
import numpy as np

from pdt_jax import records as R
from pdt_jax import teacher_notes as TN
from pdt_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class RowSpec:
    num_streams: int
    block_size: int
    lag: int
    plan_slots: int
    notes_dim: int
    buckets: tuple[int, ...]
    kd_context: int = 0                 # document tokens before the target the KD teacher reads (0 = no KD rows)
    stream_prefixes: tuple[tuple[str, str], ...] = ()
    system: str | None = None
    # Trunk pretraining (the ``document`` form): every stream's KD row is the whole article, once —
    # prompt + each section's tokens in order + one EOS — and ``kd_start[k]`` is where section k
    # begins in it, so the trunk reads each section after the ones before it in a single row (not
    # K rows repeating the earlier sections). Only the last stream's EOS is supervised: the others'
    # would teach the trunk to stop after any section.
    article: bool = False

    @property
    def max_len(self) -> int:
        return self.buckets[-1]

    def blocks(self, T: int) -> int:
        return (T - 1) // self.block_size + 1


class Featurizer:
    """record → numpy arrays of its K rows, unpadded (``collate`` pads a batch)."""

    def __init__(self, spec: RowSpec, tokenizer: Tokenizer, notes: Mapping[str, np.ndarray] | None = None):
        self.spec, self.tok, self.notes = spec, tokenizer, notes
        self.eos = tokenizer.eos_ids[0]

    def __call__(self, record: Mapping[str, Any]) -> dict:
        sp, tok = self.spec, self.tok
        K = len(record["stream_ids"])
        ex = record["example_id"]
        if K != sp.num_streams:
            raise ValueError(f"record {ex}: {K} streams, the model has {sp.num_streams} (sidecar.stream_names)")
        if len(record["plan_item_ids"]) > sp.plan_slots:
            raise ValueError(f"record {ex}: {len(record['plan_item_ids'])} plan items > "
                             f"sidecar.planner_slots={sp.plan_slots}")
        prefixes = dict(sp.stream_prefixes)
        rows, spans, starts, masks, shared_masks, truncated = [], [], [], [], [], 0
        shared = R.shared_spans(record)
        for k, text in enumerate(record["target_text"]):
            prompt = tok.prompt(record["prompt"], system=sp.system, prefix=prefixes.get(R.stream_name(k), ""))
            ids, offs = tok.encode_with_offsets(text)
            ids, offs = ids + [self.eos], offs + [(len(text), len(text))]
            room = sp.max_len - len(prompt)
            if room < 1:
                raise ValueError(f"record {ex}: its prompt has {len(prompt)} tokens; the largest bucket "
                                 f"(data.buckets) is {sp.max_len}")
            if len(ids) > room:
                ids, offs, truncated = ids[:room], offs[:room], truncated + 1
            label = np.array([any(a < e and s < b for a, b in record["label_spans"][k]) for s, e in offs])
            if offs and offs[-1][0] == len(text):
                label[-1] = not sp.article or k == K - 1   # the EOS
            rows.append(prompt + ids)
            spans.append([tuple(o) for o in offs])
            starts.append(len(prompt))
            masks.append(label)
            shared_masks.append(label & np.array([any(a < e and s < b for a, b in shared[k]) for s, e in offs], bool))
        readiness, coverage = R.block_labels(record, spans, sp.block_size, sp.lag)
        retry, _ = R.block_labels(record, spans, sp.block_size, sp.lag - 1)
        arrays = R.to_arrays(record, sp.plan_slots)
        out = {"rows": rows, "target_start": starts, "label_masks": masks, "shared_masks": shared_masks,
               "readiness": readiness, "readiness_retry": retry, "coverage": coverage, "plan_ids": arrays["plan_item_ids_P"],
               "coverage_item_mask": arrays["coverage_mask_P"], "truncated": truncated, "example_id": ex}
        if self.notes is not None:
            if ex not in self.notes:
                raise ValueError(f"record {ex}: no teacher notes in the cache (rebuild it: python -m pdt_jax.teacher_notes)")
            out["teacher_notes"] = TN.block_teacher_notes(record, self.notes[ex], spans, sp.block_size)
        if sp.article:
            # The article as one writer sees it: the user prompt without any stream's prefix.
            article, kd_starts = list(tok.prompt(record["prompt"], system=sp.system)), []
            for k, row in enumerate(rows):
                kd_starts.append(len(article))
                body = row[starts[k]:]
                article += body if k == K - 1 or body[-1:] != [self.eos] else body[:-1]
            if len(article) > sp.max_len:
                raise ValueError(f"record {ex}: its article has {len(article)} tokens, the largest bucket "
                                 f"(data.buckets) is {sp.max_len}: trunk pretraining reads whole articles")
            out["kd_rows"], out["kd_start"] = [article] * K, kd_starts
        elif sp.kd_context > 0:
            kd_rows, kd_starts = [], []
            for k, row in enumerate(rows):
                before = tok.encode(record["document_text"][:record["target_document_offset"][k]])[-sp.kd_context:]
                prompt = row[:starts[k]]
                kd_rows.append(prompt + before + row[starts[k]:])
                kd_starts.append(len(prompt) + len(before))
            out["kd_rows"], out["kd_start"] = kd_rows, kd_starts
        return out


def collate(examples: Sequence[dict], spec: RowSpec, accum: int = 1) -> dict:
    """Pads ``accum × P`` featurized examples to one bucket: arrays [A, P, K, ...] (A = accum).
    Fields: tokens, lengths, target_start, label_mask [.., T] (the token at t is supervised),
    shared_mask [.., T] (... and restates a sibling's fact),
    plan_ids [A, P, S], coverage_item_mask, readiness [.., U], readiness_retry [.., U], coverage [.., U, S], block_mask,
    teacher_notes [.., U, N] (when cached), kd_tokens / kd_lengths / kd_index (when KD rows)."""
    n = len(examples)
    if n % accum:
        raise ValueError(f"{n} examples do not split into {accum} micro-batches")
    K, S, tau = spec.num_streams, spec.plan_slots, spec.block_size
    longest = max(len(r) for e in examples for r in e["rows"])
    T = next(b for b in spec.buckets if b >= longest)
    U = spec.blocks(T)
    f = lambda *shape, dt=np.int32: np.zeros((n, K) + shape, dt)
    out = {"tokens": f(T), "lengths": f(), "target_start": f(), "label_mask": f(T, dt=bool),
           "shared_mask": f(T, dt=bool),
           "readiness": f(U, dt=np.float32), "readiness_retry": f(U, dt=np.float32),
           "coverage": f(U, S, dt=np.float32), "block_mask": f(U, dt=bool),
           "plan_ids": np.zeros((n, S), np.int32), "coverage_item_mask": np.zeros((n, S), bool),
           "truncated": np.zeros((n,), np.int32)}
    has_notes = "teacher_notes" in examples[0]
    if has_notes:
        out["teacher_notes"] = f(U, spec.notes_dim, dt=np.float32)
    has_kd = "kd_rows" in examples[0]
    if has_kd:
        T_kd = max(len(r) for e in examples for r in e["kd_rows"])
        T_kd = next((b for b in spec.buckets if b >= T_kd), max(T_kd, T + spec.kd_context))
        out.update(kd_tokens=f(T_kd), kd_lengths=f(), kd_index=np.full((n, K, T), -1, np.int32))
    for i, e in enumerate(examples):
        out["plan_ids"][i], out["coverage_item_mask"][i] = e["plan_ids"], e["coverage_item_mask"]
        out["truncated"][i] = e["truncated"]
        for k in range(K):
            row, s = e["rows"][k], e["target_start"][k]
            L, n_target = len(row), len(row) - e["target_start"][k]
            out["tokens"][i, k, :L], out["lengths"][i, k], out["target_start"][i, k] = row, L, s
            out["label_mask"][i, k, s:L] = e["label_masks"][k]
            out["shared_mask"][i, k, s:L] = e["shared_masks"][k]
            u = min(len(e["readiness"][k]), U, (n_target - 1) // tau + 1)
            out["readiness"][i, k, :u] = e["readiness"][k][:u]
            out["readiness_retry"][i, k, :u] = e["readiness_retry"][k][:u]
            out["block_mask"][i, k, :u] = True
            cov = np.asarray(e["coverage"][k], np.float32).reshape(len(e["coverage"][k]), -1)[:u]
            out["coverage"][i, k, :u, :cov.shape[1]] = cov
            if has_notes:
                tn = e["teacher_notes"][k][:u]
                out["teacher_notes"][i, k, :len(tn)] = tn
            if has_kd:
                kr, ks = e["kd_rows"][k], e["kd_start"][k]
                out["kd_tokens"][i, k, :len(kr)], out["kd_lengths"][i, k] = kr, len(kr)
                # Student position t (predicting token t + 1 of the target) ↔ teacher position.
                t = np.arange(s - 1, L - 1)
                out["kd_index"][i, k, t] = ks - 1 + (t - (s - 1))
    return {k: v.reshape((accum, n // accum) + v.shape[1:]) for k, v in out.items()}


def dataset(split_path, featurizer: Featurizer, spec: RowSpec, examples_per_step: int, accum: int, seed: int,
            shuffle: bool = True, repeat: bool = True, max_records: int = 0):
    """The grain pipeline of one split: (the first ``max_records`` records, when > 0) shuffled —
    reshuffled every epoch — this process's share, featurized, and collated ``accum × P`` at a time. Returns an ``IterDataset`` whose
    iterators have ``get_state`` / ``set_state``."""
    ds = grain.MapDataset.source(R.RecordSource(str(split_path)))
    n = len(ds)
    if n == 0:
        raise ValueError(f"{split_path}: no records")
    if max_records > 0:
        ds = ds[:max_records]
    if jax.process_count() > 1:
        ds = ds[jax.process_index()::jax.process_count()]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat(None)
    per_process = examples_per_step // jax.process_count()
    ds = ds.map(featurizer).batch(per_process * accum, drop_remainder=True,
                                  batch_fn=lambda exs: collate(exs, spec, accum))
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
