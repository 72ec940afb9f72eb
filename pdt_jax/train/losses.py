"""The training objective (the paper's Appendix A), each term on its own, masked to what is real.

Terms (``TERMS``; a stage's weights choose which count, every computed term is logged):

* ``planner``: CE of the planner's slots against the record's plan ids; null slots (id 0) are
  ignored (the PyTorch trainer trained them).
* ``notes`` / ``spec``: MSE of the notes head / speculation head per block against the teacher's
  note embedding of that block (D6), on real blocks that have a teacher note only.
* ``lm``: next-token CE — the logits at t predict the token at t + 1 — on the target tokens the
  record's label spans supervise (section masks) and the EOS.
* ``shared``: the same CE on the supervised tokens that restate what a sibling stream introduced
  (``batch["shared_mask"]``, ``records.shared_spans``: a founder another part named, a year it
  wrote) — a few tokens per row that only the bus can predict, which the mean over every token
  drowns (README "Training": measured on the demo, the bus stays unused without it).
* ``kd``: KL(teacher ‖ student) at temperature T (× T²) on the same positions, against the frozen
  trunk reading the document before the stream's target (D7), aligned token for token.
* ``coverage``: BCE per block and plan item against the 0 / 0.5 / 1 labels, hint-provenance items
  and padded slots masked.
* ``readiness``: BCE per block against the lag-Δ readiness labels.
* ``retry``: the same BCE on each block's retry pair — the readiness the runtime asks for when a
  stream that failed the gate decodes the block again reading round v + 1's window (``forward``'s
  ``retry``) — against the labels at horizon v + 1 − Δ (``readiness_retry``), on the blocks whose
  retry window differs from the attempt's (a greedy runtime commits the others without asking).
* ``stream``: CE of the stream classifier (which stream wrote this row).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

TERMS = ("planner", "notes", "spec", "lm", "shared", "kd", "coverage", "readiness", "retry", "stream")


def _mean(x, mask):
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _bce(logits, targets):
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def lm_targets(batch, field: str = "label_mask"):
    """(next tokens [B, T], mask [B, T]): position t is scored on the token at t + 1 (``field``:
    which token mask — ``label_mask``, or ``shared_mask`` for the shared term)."""
    tokens = batch["tokens"]
    P, K, T = tokens.shape
    nxt = jnp.concatenate([tokens[..., 1:], jnp.zeros_like(tokens[..., :1])], axis=-1).reshape(P * K, T)
    mask = jnp.concatenate([batch[field][..., 1:], jnp.zeros_like(batch[field][..., :1])], axis=-1)
    return nxt, mask.reshape(P * K, T)


def token_terms_chunked(hidden_BxTxD, kd_hidden_BxTxD, nxt_BxT, mask_BxT, kd_mask_BxT, unembed, *, lm: bool,
                        kd: bool, temperature: float, chunk: int, shared_mask_BxT=None):
    """LM CE and KD of ``compute`` from hidden states, ``chunk`` positions at a time: the [B, T, V]
    logits (201k-wide for GPT-OSS) are never materialised, and each chunk's are recomputed in the
    backward pass (``jax.checkpoint``). Returns {"lm": …, "kd": …, "shared": …} (the terms asked
    for; ``shared`` when ``shared_mask_BxT`` is given)."""
    B, T, D = hidden_BxTxD.shape
    n = -(-T // chunk)
    pad = n * chunk - T
    split = lambda x: jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2)).reshape(
        (B, n, chunk) + x.shape[2:]).swapaxes(0, 1)
    shared = shared_mask_BxT is not None
    xs = (split(hidden_BxTxD), split(nxt_BxT), split(mask_BxT), split(kd_mask_BxT),
          split(shared_mask_BxT if shared else mask_BxT))
    if kd:
        xs = xs + (split(kd_hidden_BxTxD),)

    @jax.checkpoint
    def body(x):
        h, y, m, km, sm = x[:5]
        logits = unembed(h).astype(jnp.float32)
        out = {}
        if lm or shared:
            logp = jax.nn.log_softmax(logits, axis=-1)
            nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
            if lm:
                out["lm"] = (jnp.sum(nll * m), jnp.sum(m.astype(jnp.float32)))
            if shared:
                out["shared"] = (jnp.sum(nll * sm), jnp.sum(sm.astype(jnp.float32)))
        if kd:
            t_logp = jax.nn.log_softmax(unembed(x[5]).astype(jnp.float32) / temperature, axis=-1)
            s_logp = jax.nn.log_softmax(logits / temperature, axis=-1)
            kl = jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1) * temperature ** 2
            out["kd"] = (jnp.sum(kl * km), jnp.sum(km.astype(jnp.float32)))
        return out
    sums = jax.lax.map(body, xs)
    return {k: jnp.sum(num) / jnp.maximum(jnp.sum(den), 1.0) for k, (num, den) in sums.items()}


def compute(out: Mapping, batch: Mapping, weights: Mapping[str, float], *, kd_logits=None,
            kd_temperature: float = 1.0, unembed=None, kd_hidden=None, chunk: int = 0) -> tuple[jax.Array, dict]:
    """(weighted total, {term: value}) for the terms with a non-zero weight. ``kd_logits``: the
    KD teacher's logits aligned to the student's positions [B, T, V] (needed when ``kd`` counts).
    With ``chunk`` > 0 and ``unembed`` (the trunk's), LM CE and KD are computed from
    ``out["hidden"]`` (and the teacher's ``kd_hidden``) ``chunk`` positions at a time
    (``token_terms_chunked``) — the same values without the full logits."""
    terms = {}
    on = lambda name: float(weights.get(name, 0.0)) != 0.0
    real_blocks = lambda: batch["block_mask"] & out["block_present"]
    if on("planner"):
        logp = jax.nn.log_softmax(out["planner_logits"].astype(jnp.float32), axis=-1)
        ids = batch["plan_ids"]
        nll = -jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]
        terms["planner"] = _mean(nll, ids > 0)
    if on("notes") or on("spec"):
        teacher = batch["teacher_notes"]
        real = real_blocks() & jnp.any(teacher != 0, axis=-1)
        for name, key in (("notes", "notes"), ("spec", "speculative_notes")):
            if on(name):
                terms[name] = _mean(jnp.mean((out[key] - teacher) ** 2, axis=-1), real)
    shared_mask = lm_targets(batch, "shared_mask")[1] if on("shared") else None
    if (on("lm") or on("kd") or on("shared")) and chunk > 0:
        if on("kd") and kd_hidden is None:
            raise ValueError("losses: the kd term needs the KD teacher's hidden states (data.kd_context > 0)")
        nxt, mask = lm_targets(batch)
        kd_mask = mask & (batch["kd_index"].reshape(mask.shape) >= 0) if on("kd") else mask
        terms.update(token_terms_chunked(out["hidden"], kd_hidden, nxt, mask, kd_mask, unembed, lm=on("lm"),
                                         kd=on("kd"), temperature=kd_temperature, chunk=chunk,
                                         shared_mask_BxT=shared_mask))
    elif on("lm") or on("kd") or on("shared"):
        nxt, mask = lm_targets(batch)
        logits = out["lm_logits"].astype(jnp.float32)
        if on("lm") or on("shared"):
            logp = jax.nn.log_softmax(logits, axis=-1)
            nll = -jnp.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0]
            if on("lm"):
                terms["lm"] = _mean(nll, mask)
            if on("shared"):
                terms["shared"] = _mean(nll, shared_mask)
        if on("kd"):
            if kd_logits is None:
                raise ValueError("losses: the kd term needs the KD teacher's logits (data.kd_context > 0)")
            tT = kd_temperature
            t_logp = jax.nn.log_softmax(kd_logits.astype(jnp.float32) / tT, axis=-1)
            s_logp = jax.nn.log_softmax(logits / tT, axis=-1)
            kl = jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1) * tT ** 2
            has_teacher = batch["kd_index"].reshape(mask.shape) >= 0
            terms["kd"] = _mean(kl, mask & has_teacher)
    if on("coverage"):
        m = real_blocks()[..., None] & batch["coverage_item_mask"][:, None, None, :]
        terms["coverage"] = _mean(_bce(out["coverage_logits"], batch["coverage"]), m)
    if on("readiness"):
        terms["readiness"] = _mean(_bce(out["readiness_logits"], batch["readiness"]), real_blocks())
    if on("retry"):
        terms["retry"] = _mean(_bce(out["retry_readiness_logits"], batch["readiness_retry"]),
                               real_blocks() & out["retry_differs"])
    if on("stream"):
        logp = jax.nn.log_softmax(out["stream_logits"].astype(jnp.float32), axis=-1)     # [P, K, K]
        terms["stream"] = -jnp.mean(jnp.diagonal(logp, axis1=1, axis2=2))
    total = sum(float(weights[k]) * v for k, v in terms.items())
    return total, terms
