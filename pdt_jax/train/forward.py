"""The teacher-forced PDT forward that training differentiates, in two forms (README "Training").

``exact``: block-recurrent. The prompts are prefilled as the runtime prefills them, then a
``lax.scan`` over rounds runs the runtime's own round (``runtime.program.round_fn``: the τ decode
steps of ``trunk.decode.step`` with teacher-forced tokens, coverage, the provisional note and
readiness) and publishes notes under the runtime's rules (deterministic cadence every M tokens,
stamp v + 1, visibility at horizon v − Δ, ``bus_capacity`` live notes per producer). A note is
written by a stream that was already reading its siblings' notes, as at inference, so logits,
notes and readiness equal the runtime's at every round (a test holds them to 1e-5 at Δ = 0, 1, 2).
Its cost: the trunk runs token by token (U·τ sequential steps of B rows) and the backward keeps
each round's state (remat per round is config).

``passes``: ``model.forward_train`` with n whole-sequence passes; pass i reads the notes pass i − 1
wrote, so its logits are exact through round n·(Δ + 1) − 1 and drift after it
(``bench/train_forward.py`` measures how much, per stage).

Both return the same dict (``model.forward_train``'s keys), so losses never ask which form ran.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from pdt_jax import bus as bus_lib
from pdt_jax import model as pdt
from pdt_jax.runtime import program
from pdt_jax.sidecar import coverage, heads
from pdt_jax.trunk import model as trunk_model

FORMS = ("exact", "passes")


def forward(trunk_params: dict, sidecar_params: dict, batch: Mapping[str, Any], *, cfg: pdt.PDTConfig,
            form: str = "exact", passes: int = 2, gate: float = 1.0, stop_grad_notes: bool = False,
            remat: bool = False, moe_impl: str = "auto", q_chunk: int | None = None, retry: bool = False) -> dict:
    """The training forward of ``form`` ('exact' or 'passes', with ``passes`` passes); ``retry``:
    with each block's retry pair (``forward_exact``, ``model.forward_train``)."""
    if form == "exact":
        return forward_exact(trunk_params, sidecar_params, batch, cfg=cfg, gate=gate,
                             stop_grad_notes=stop_grad_notes, remat=remat, moe_impl=moe_impl, retry=retry)
    if form == "passes":
        return pdt.forward_train(trunk_params, sidecar_params, batch, cfg=cfg, gate=gate, passes=passes,
                                 stop_grad_notes=stop_grad_notes, moe_impl=moe_impl, remat=remat, q_chunk=q_chunk,
                                 retry=retry)
    raise ValueError(f"train.forward.form: expected one of {FORMS}, found {form!r}")


def _regularise(small, emit_B, batch, v, P: int, K: int):
    """Training's bus regularisers on the note a round publishes (``model.edit_bus``'s batch
    fields): ``bus_mix`` [P] — the example's streams publish the teacher's note of this block
    instead; ``note_noise`` [P, K, U, N] — added; ``producer_keep`` [P, K] — a dropped producer
    publishes nothing."""
    note = small.note
    if batch.get("bus_mix") is not None:
        teacher = jnp.asarray(batch["teacher_notes"], jnp.float32)[:, :, v].reshape(P * K, -1)
        note = jnp.where(jnp.repeat(jnp.asarray(batch["bus_mix"], bool), K)[:, None], teacher, note)
    if batch.get("note_noise") is not None:
        note = note + jnp.asarray(batch["note_noise"], note.dtype)[:, :, v].reshape(P * K, -1)
    if batch.get("producer_keep") is not None:
        emit_B = emit_B & jnp.asarray(batch["producer_keep"], bool).reshape(-1)
    return small.replace(note=note), emit_B


def forward_exact(trunk_params: dict, sidecar_params: dict, batch: Mapping[str, Any], *, cfg: pdt.PDTConfig,
                  gate: float = 1.0, lag=None, note_every: int | None = None, stop_grad_notes: bool = False,
                  remat: bool = False, moe_impl: str = "auto", retry: bool = False) -> dict:
    """Teacher-forced PDT, round by round as the runtime decodes (module docstring).

    batch: as ``model.forward_train`` (tokens [P, K, T], lengths, target_start, plan_ids, optional
    snapshot0). ``lag``: Δ (traced; default the sidecar's); ``note_every``: the cadence M (default τ).
    A row is active in round v while it has target tokens left (its target ends at its length; an
    end-of-sequence id inside a target ends that row's round there, as at inference — the data
    pipeline puts EOS at the end only).
    The bus regularisers (``model.edit_bus``'s batch fields) act on what each round publishes.
    Returns ``model.forward_train``'s keys (``bus_notes``: the provisional note of each round, what a
    publish writes without regularisers; ``window_mask`` is replaced by ``window_size`` [P, K, U]) plus ``published``
    [P, K, U] (the round's note went on the bus).

    ``retry``: also each block's retry pair — the block decoded again from the same start, reading
    the window the runtime's retry reads when that stream alone fails the gate (``bus.retry_window``:
    round v + 1's, without its own note of block v) — returning ``retry_readiness_logits``
    [P, K, U], ``retry_window_size`` [P, K, U] and ``retry_differs`` [P, K, U] (that window differs from the attempt's: otherwise a
    greedy runtime commits instead of retrying). Only the agreement head gets a gradient from it:
    the retry pass sees every other parameter, the state and the notes as constants (with
    ``remat`` its decode is recomputed in the backward pass too)."""
    sc, K = cfg.sidecar, cfg.K
    tau = sc.block_size
    M = tau if note_every is None else int(note_every)
    lag = sc.lag if lag is None else lag
    tokens = jnp.asarray(batch["tokens"])
    P, _, T = tokens.shape
    B = P * K
    U = (T - 1) // tau + 1
    rows = lambda x: jnp.asarray(x).reshape(B, *jnp.shape(x)[2:])
    ids, lengths, start = rows(tokens), rows(batch["lengths"]), rows(batch["target_start"])
    plan_ids = jnp.asarray(batch["plan_ids"], jnp.int32)
    gate_B = jnp.full((B,), gate, jnp.float32)
    static = program.RoundStatic(cfg=cfg, block_size=tau, top_k=0, blend=False, swap=(), moe_impl=moe_impl,
                                 greedy=True, freeze=False, ablate=False)

    # Prompts: the runtime's prefill (windows empty, adapters acting) and its first logits.
    hidden_p, cache = pdt.prefill(trunk_params, sidecar_params, ids, start, cfg=cfg, max_len=T, slack=2 * tau + 1,
                                  gate_B=gate_B, moe_impl=moe_impl)
    last = jnp.take_along_axis(hidden_p, (start - 1)[:, None, None], axis=1)
    logits0 = trunk_model.unembed(trunk_params, last)[:, 0]
    snapshot0 = batch.get("snapshot0")
    if snapshot0 is None:
        snapshot0 = heads.plan_snapshot(sidecar_params["plan_embed"], sidecar_params["plan_to_notes"], plan_ids)
    snapshot0 = jnp.asarray(snapshot0, jnp.float32)
    bus = bus_lib.seed_snapshot0(bus_lib.init_bus(P, K, sc.bus_capacity, sc.notes_dim, slack=0), snapshot0)
    H, S, D = sc.coverage_heads, sc.planner_slots, hidden_p.shape[-1]
    cov = coverage.empty(B, H, S, sc.coverage_dim // H)
    small = program.Small(length=cache.length, base_length=cache.length, logits=logits0, cov_max=cov[0],
                          cov_den=cov[1], cov_num=cov[2], note_sum=jnp.zeros((B, D), jnp.float32),
                          note_count=jnp.zeros((B,), jnp.int32), note=jnp.zeros((B, sc.notes_dim), jnp.float32))
    item_ids = jnp.repeat(plan_ids, K, axis=0)
    target_len = lengths - start
    # Teacher-forced tokens of every round: [U, B, τ] (pad past a row's end; never decoded).
    j = jnp.arange(U * tau)
    pos = start[:, None] + j[None, :]
    forced = jnp.where(j[None, :] < target_len[:, None], jnp.take_along_axis(ids, jnp.minimum(pos, T - 1), axis=1),
                       cfg.trunk.pad_token_id)
    forced = forced.reshape(B, U, tau).transpose(1, 0, 2)
    key = jax.random.key(0)  # unused: greedy programs never sample

    if retry:
        sg = jax.lax.stop_gradient
        retry_side = dict(sg(sidecar_params), agree=sidecar_params["agree"])

    def one_round(carry, xs):
        cache, small, bus, since, emit_prev = carry
        v, forced_B = xs
        bus, small = program.publish(bus, small, v, emit_prev.reshape(P, K))   # stamp v: notes of round v − 1
        remaining = jnp.clip(target_len - v * tau, 0, tau)
        active = remaining > 0
        start_cache, start_small = cache, small
        cache, _, small, _, out, _ = program.round_fn(
            static, trunk_params, sidecar_params, cache, None, small, bus, item_ids, v, lag, active, remaining,
            gate_B, 1.0, 1.0, 1.0, key, {}, forced=forced_B)
        if stop_grad_notes:
            small = small.replace(note=jax.lax.stop_gradient(small.note))
        produced = out["produced"].sum(-1)
        emit = active & (since + produced >= M)           # the runtime's deterministic cadence
        since = jnp.where(emit, 0, since + produced)
        ys_note = out["note"]
        small, emit = _regularise(small, emit, batch, v, P, K)   # what is published (training only)
        ys = {k: out[k] for k in ("hidden", "coverage", "readiness", "window_size", "produced")}
        ys["note"] = ys_note
        if retry:
            # The block again, from its start, reading what a retry reads (round v + 1's window
            # without the stream's own note of this block).
            after, _ = program.publish(bus, small, v + 1, emit.reshape(P, K))
            w_retry = sg(bus_lib.retry_window(bus, after, v + 1, lag))
            w_attempt = bus_lib.visible_window(bus, v, lag, ordered=False)
            _, _, _, _, out_r, _ = program.round_fn(
                static, sg(trunk_params), retry_side, sg(start_cache), None, sg(start_small), None, item_ids, v + 1,
                lag, active, remaining, gate_B, 1.0, 1.0, 1.0, key, {}, forced=forced_B, window=w_retry)
            differs = jnp.any((w_retry.mask != w_attempt.mask)
                              | (w_retry.mask & (w_retry.version != w_attempt.version)), axis=-1)
            ys.update(retry_readiness=out_r["readiness"], retry_differs=differs.reshape(B),
                      retry_window_size=out_r["window_size"])
        return (cache, small, bus, since, emit), dict(ys, published=emit)

    body = jax.checkpoint(one_round) if remat else one_round
    carry = (cache, small, bus, jnp.zeros((B,), jnp.int32), jnp.zeros((B,), bool))
    _, ys = jax.lax.scan(body, carry, (jnp.arange(U, dtype=jnp.int32), forced))

    # Every position's hidden state: the prompt's from the prefill, the target's from its round.
    hid_rounds = ys["hidden"].transpose(1, 0, 2, 3).reshape(B, U * tau, D)          # [B, U·τ, D]
    t = jnp.arange(T)[None, :]
    rel = t - start[:, None]
    in_target = (rel >= 0) & (t < lengths[:, None])
    from_round = jnp.take_along_axis(hid_rounds, jnp.clip(rel, 0, U * tau - 1)[:, :, None], axis=1)
    hidden = jnp.where(in_target[:, :, None], from_round.astype(hidden_p.dtype), hidden_p)
    hidden = jnp.where((t < lengths[:, None])[:, :, None], hidden, 0)
    lm_logits = trunk_model.unembed(trunk_params, hidden)

    block = jnp.where(in_target, rel // tau, -1)
    pooled, present_B = heads.block_pool(hidden, block, U)
    streams = heads.stream_logits(sidecar_params["stream_cls"], hidden, block >= 0)
    in_prompt = (t < start[:, None])
    planner = heads.planner_logits(sidecar_params["planner"], sidecar_params["plan_embed"],
                                   hidden_p.reshape(P, K * T, -1), in_prompt.reshape(P, K * T))
    present = present_B.reshape(P, K, U)
    per_block = lambda x: x.swapaxes(0, 1).reshape(P, K, U, *x.shape[2:])           # [U, B, ...] → [P, K, U, ...]
    shape = lambda x: x.reshape(P, K, *x.shape[1:])
    return {
        "lm_logits": lm_logits, "hidden": hidden, "planner_logits": planner, "snapshot0": snapshot0,
        "bus_notes": per_block(ys["note"]), "notes": shape(heads.note_head(sidecar_params["notes_head"], pooled)),
        "speculative_notes": shape(heads.note_head(sidecar_params["spec_head"], pooled)),
        "block_present": present, "coverage_logits": jnp.where(present[..., None], per_block(ys["coverage"]), 0.0),
        "readiness_logits": jnp.where(present, per_block(ys["readiness"]), 0.0), "stream_logits": shape(streams),
        "window_size": per_block(ys["window_size"]), "published": per_block(ys["published"]),
        **({"retry_readiness_logits": jnp.where(present, per_block(ys["retry_readiness"]), 0.0),
            "retry_differs": present & per_block(ys["retry_differs"]),
            "retry_window_size": jnp.where(present, per_block(ys["retry_window_size"]), 0)} if retry else {}),
    }
