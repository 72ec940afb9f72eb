"""Shared by the training benches: synthetic batches in the collated layout (concrete, or abstract
for a memory plan). A stage's step comes from ``train.step.StepStatic.from_stage``."""
from __future__ import annotations

import numpy as np


def batch_shapes(cfg, P: int, T: int, accum: int, kd_context: int) -> dict:
    """{field: (shape, dtype)} of a collated batch (``train/data.collate``)."""
    K, sc = cfg.K, cfg.sidecar
    U, S, N = (T - 1) // sc.block_size + 1, sc.planner_slots, sc.notes_dim
    lead = (accum, P, K)
    out = {"tokens": (lead + (T,), np.int32), "lengths": (lead, np.int32), "target_start": (lead, np.int32),
           "label_mask": (lead + (T,), np.bool_), "shared_mask": (lead + (T,), np.bool_),
           "readiness": (lead + (U,), np.float32), "readiness_retry": (lead + (U,), np.float32),
           "coverage": (lead + (U, S), np.float32), "block_mask": (lead + (U,), np.bool_),
           "plan_ids": ((accum, P, S), np.int32), "coverage_item_mask": ((accum, P, S), np.bool_),
           "truncated": ((accum, P), np.int32), "teacher_notes": (lead + (U, N), np.float32)}
    if kd_context:
        out.update(kd_tokens=(lead + (T + kd_context,), np.int32), kd_lengths=(lead, np.int32),
                   kd_index=(lead + (T,), np.int32))
    return out


def synthetic_batch(cfg, P: int, T: int, prompt: int, accum: int = 1, kd_context: int = 0, seed: int = 0) -> dict:
    """Random tokens and labels of the collated layout: every row full (T tokens, the target after
    ``prompt`` tokens), every block labelled, teacher notes present."""
    rng = np.random.default_rng(seed)
    V, Vp = cfg.trunk.vocab_size, cfg.sidecar.plan_vocab_size
    out = {}
    for name, (shape, dt) in batch_shapes(cfg, P, T, accum, kd_context).items():
        out[name] = np.zeros(shape, dt)
    out["tokens"][:] = rng.integers(1, V, out["tokens"].shape)
    out["lengths"][:] = T
    out["target_start"][:] = prompt
    out["label_mask"][..., prompt:] = True
    out["shared_mask"][..., prompt:] = rng.random(out["shared_mask"][..., prompt:].shape) < 0.05
    U_real = (T - prompt - 1) // cfg.sidecar.block_size + 1
    out["block_mask"][..., :U_real] = True
    out["readiness"][:] = rng.integers(0, 2, out["readiness"].shape)
    out["readiness_retry"][:] = np.maximum(out["readiness"], rng.integers(0, 2, out["readiness"].shape))
    out["coverage"][:] = rng.choice([0.0, 0.5, 1.0], out["coverage"].shape)
    out["plan_ids"][:] = rng.integers(1, Vp, out["plan_ids"].shape)
    out["coverage_item_mask"][:] = True
    out["teacher_notes"][:] = rng.normal(size=out["teacher_notes"].shape) * (out["block_mask"][..., None])
    if kd_context:
        out["kd_tokens"][:] = rng.integers(1, V, out["kd_tokens"].shape)
        out["kd_lengths"][:] = T + kd_context
        t = np.arange(T)
        out["kd_index"][:] = np.where(t >= prompt - 1, t + kd_context, -1)
    return out


def abstract_batch(cfg, P: int, T: int, accum: int, kd_context: int) -> dict:
    import jax
    return {k: jax.ShapeDtypeStruct(shape, dt) for k, (shape, dt) in batch_shapes(cfg, P, T, accum, kd_context).items()}
