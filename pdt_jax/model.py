"""PDT = frozen trunk + sidecar, as pure functions.

Rows: P prompts × K streams are one batch of B = P·K rows, stream-minor (row = p·K + k).

Rounds and stamps: round v decodes block v (τ tokens) of every stream. The note a stream writes at
the end of block u is published with stamp u + 1 (the first round that could read it), so a
consumer at round v sees snapshot 0 and every note with stamp ≤ v − Δ: Δ = 0 is "immediately
visible in the next round", Δ = 1 adds one round of delay. A producer keeps its newest
``bus_capacity`` notes; notes stay readable until evicted (never read-once).

``forward_train`` runs n whole-sequence passes over teacher-forced streams (ARCHITECTURE.md, data
flow "Train"): pass 1 writes a note per block with the speculation head reading snapshot 0 (or the
teacher's notes); pass i decodes every stream against the windows pass i − 1's notes make under the
rules above, so a stream's LM loss reaches its siblings' note writers through SNC (unless
``stop_grad_notes``). At inference a note is written by a stream already reading its siblings'
notes, so pass n is exact through round n·(Δ + 1) − 1 only; ``train/forward.py`` has the exact,
block-recurrent form and says how the two compare.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from pdt_jax.bus import pad_or_truncate_l2
from pdt_jax.sharding import ShardingRules, make_mesh
from pdt_jax.sidecar import coverage as coverage_lib
from pdt_jax.sidecar import heads
from pdt_jax.sidecar.config import SidecarConfig
from pdt_jax.sidecar.hooks import HookContext, SidecarHooks
from pdt_jax.sidecar.params import sidecar_specs
from pdt_jax.trunk import decode
from pdt_jax.trunk import moe as moe_lib
from pdt_jax.trunk import model as trunk_model
from pdt_jax.trunk.cache import KVCache
from pdt_jax.trunk.config import TrunkConfig
from pdt_jax.trunk.params import init_from_specs


@dataclasses.dataclass(frozen=True)
class PDTConfig:
    trunk: TrunkConfig
    sidecar: SidecarConfig
    # Where it runs (pdt_jax/sharding.py): mesh axis sizes ((axis, size) pairs; -1 = the devices
    # left; empty = one device) and the logical-axis rules every program's shardings come from.
    mesh: tuple[tuple[str, int], ...] = ()
    rules: ShardingRules = ShardingRules()

    @property
    def K(self) -> int:
        return self.sidecar.num_streams

    def make_mesh(self, devices=None):
        return make_mesh(dict(self.mesh), devices)

    def moe_impl(self, mesh) -> str:
        """With the experts split over devices, every device runs its own experts on every token
        and the combine sums over devices (``dense``): ``gather``/``ragged`` would fetch other
        devices' expert weights. Otherwise the trunk picks by token count."""
        return "dense" if self.rules.size("experts", mesh) > 1 else "auto"

    def train_moe_impl(self, mesh):
        """Training's MoE: as ``moe_impl``, and on a mesh that splits the rows (FSDP) each device
        runs it on its own rows' tokens (``moe.PerShard``)."""
        impl = self.moe_impl(mesh)
        axes = tuple(a for a in self.rules.mesh_axes("batch") if mesh.shape.get(a, 1) > 1)
        return moe_lib.PerShard(mesh, axes, impl) if axes and impl == "auto" else impl

    def hooks(self) -> SidecarHooks:
        return SidecarHooks(layers=self.sidecar.layers_for(self.trunk), num_streams=self.K)


def init_sidecar(cfg: PDTConfig, key: jax.Array) -> dict:
    return init_from_specs(sidecar_specs(cfg.trunk, cfg.sidecar), key)


def _rows(x_PxK, P, K):
    return x_PxK.reshape(P * K, *x_PxK.shape[2:])


# ---- windows for teacher-forced training ---------------------------------------------------------

def block_index(T: int, target_start_B: jax.Array, block_size: int) -> jax.Array:
    """[B, T] block id of every position (−1 for the prompt)."""
    t = jnp.arange(T)[None, :]
    rel = t - target_start_B[:, None]
    return jnp.where(rel >= 0, rel // block_size, -1)


def training_window_mask(block_BxT: jax.Array, present_PxKxU: jax.Array, cfg: SidecarConfig,
                         visible_producers_KxK: jax.Array | None = None, lag: int | None = None) -> jax.Array:
    """[B, T, 1 + K·U] bool: entry 0 is snapshot 0, entry 1 + j·U + u is producer j's note of block u.

    Token in block v of consumer k sees snapshot 0, and note (j, u) iff u + 1 ≤ v − Δ (stamp rule),
    the note is still live — producer j published fewer than ``bus_capacity`` notes after it before
    round v (a producer that stopped writing keeps its last notes) — block u of j exists, and j is a
    producer k may read. Prompt tokens (v = −1) see nothing: at inference the prompt is encoded
    before the planner has written snapshot 0. ``lag``: Δ (default the sidecar's)."""
    lag = cfg.lag if lag is None else lag
    B, T = block_BxT.shape
    P, K, U = present_PxKxU.shape
    v = block_BxT[:, :, None, None]                                  # [B, T, 1, 1]
    u = jnp.arange(U)[None, None, None, :]
    present = jnp.repeat(present_PxKxU, K, axis=0)                   # [B, K_prod, U]
    written = jnp.cumsum(present.astype(jnp.int32), axis=-1)         # notes published up to block u
    upto = jnp.clip(block_BxT - 1, 0, U - 1)                         # last block published before v
    before_v = jnp.take_along_axis(written[:, None, :, :], upto[:, :, None, None], axis=-1)   # [B, T, K, 1]
    before_v = jnp.where(v >= 1, before_v, 0)
    live = before_v - written[:, None, :, :] < cfg.bus_capacity
    mask = (u + 1 <= v - lag) & live & present[:, None, :, :]
    if visible_producers_KxK is not None:
        consumer = jnp.tile(jnp.arange(K), P)                          # row → stream index
        mask = mask & visible_producers_KxK[consumer][:, None, :, None]
    snap = (block_BxT >= 0)[:, :, None]
    return jnp.concatenate([snap, mask.reshape(B, T, K * U)], axis=-1)


def retry_window_mask(block_BxT: jax.Array, present_PxKxU: jax.Array, cfg: SidecarConfig,
                      visible_producers_KxK: jax.Array | None = None) -> jax.Array:
    """``training_window_mask``'s layout, for each block's retry: what a stream reads when it alone
    failed the readiness gate on block v and decodes it again (``runtime/orchestrator.py``: round
    v + 1's window, horizon v + 1 − Δ, without its own rolled-back note of block v). Its siblings'
    entries are those block v + 1 reads; its own, those block v reads at lag Δ − 1 except block v's."""
    B, T = block_BxT.shape
    P, K, U = present_PxKxU.shape
    siblings = training_window_mask(jnp.where(block_BxT >= 0, block_BxT + 1, block_BxT), present_PxKxU, cfg,
                                    visible_producers_KxK)
    own = training_window_mask(block_BxT, present_PxKxU, cfg, visible_producers_KxK, lag=cfg.lag - 1)
    u = jnp.arange(U)
    own_entry = (jnp.arange(K)[None, :] == jnp.tile(jnp.arange(K), P)[:, None])                   # [B, K]
    own_entry = jnp.repeat(own_entry, U, axis=1)[:, None, :]                                      # [B, 1, K·U]
    before_block = jnp.tile(u, K)[None, None, :] < block_BxT[:, :, None]                          # [B, T, K·U]
    notes = jnp.where(own_entry, own[..., 1:] & before_block, siblings[..., 1:])
    return jnp.concatenate([siblings[..., :1], notes], axis=-1)


def _window_notes(snapshot0_PxN, notes_PxKxUxN, K):
    """The training window of every row: [B, 1 + K·U, N] notes and [B, 1 + K·U] writer ids."""
    P, _, U, N = notes_PxKxUxN.shape
    flat = notes_PxKxUxN.reshape(P, -1, N)
    notes = jnp.concatenate([snapshot0_PxN[:, None, :], flat], axis=1)   # [P, 1 + K·U, N]
    writers = jnp.concatenate([jnp.array([K]), jnp.repeat(jnp.arange(K), U)]).astype(jnp.int32)
    return jnp.repeat(notes, K, axis=0), jnp.broadcast_to(writers, (P * K, 1 + K * U))


def coverage_logits(side_p: dict, item_ids_BxS: jax.Array, hidden_BxTxD: jax.Array, written_BxT: jax.Array,
                    ends_BxU: jax.Array, num_heads: int) -> jax.Array:
    """Coverage of each plan item by a stream's text up to the end of each block (``ends``: the
    block's last position, −1 = no such block → 0), for every block at once: an associative scan
    of the runtime's online-softmax state (sidecar/coverage.py). Returns float32 [B, U, S]."""
    T = hidden_BxTxD.shape[1]
    scores, values = coverage_lib.project(side_p["coverage"], side_p["plan_embed"], item_ids_BxS, hidden_BxTxD,
                                          num_heads)
    states = coverage_lib.prefix_states(scores, values, written_BxT)               # [B, H, S, T, ...]
    idx = jnp.clip(ends_BxU, 0, T - 1)
    at_ends = (jnp.take_along_axis(states[0], idx[:, None, None, :], axis=3),
               jnp.take_along_axis(states[1], idx[:, None, None, :], axis=3),
               jnp.take_along_axis(states[2], idx[:, None, None, :, None], axis=3))
    return jnp.where((ends_BxU >= 0)[..., None], coverage_lib.readout(side_p["coverage"], at_ends), 0.0)


def edit_bus(notes_PxKxUxN, present_PxKxU, batch: Mapping[str, Any], teacher=None):
    """Training's bus regularisers, each given by an optional batch field (drawn by the train step):
    ``bus_mix`` [P] bool — the example's streams read the teacher's notes instead of their own;
    ``producer_keep`` [P, K] bool — a dropped producer's notes leave every window (stream dropout);
    ``note_noise`` [P, K, U, N] — added to the notes (already scaled)."""
    notes, present = notes_PxKxUxN, present_PxKxU
    if batch.get("bus_mix") is not None:
        mix = jnp.asarray(batch["bus_mix"], bool)
        if teacher is None:
            raise ValueError("bus mixing needs batch['teacher_notes']")
        notes = jnp.where(mix[:, None, None, None], teacher, notes)
        present = jnp.where(mix[:, None, None], jnp.any(teacher != 0, axis=-1), present)
    if batch.get("note_noise") is not None:
        notes = notes + jnp.asarray(batch["note_noise"], notes.dtype)
    if batch.get("producer_keep") is not None:
        keep = jnp.asarray(batch["producer_keep"], bool)
        present = present & keep[:, :, None]
        notes = notes * keep[:, :, None, None]
    return notes, present


def forward_train(trunk_params: dict, sidecar_params: dict, batch: Mapping[str, Any], *, cfg: PDTConfig,
                  gate: float = 1.0, stop_grad_notes: bool = False, pass_a: str = "snapshot0",
                  visible_producers: jax.Array | None = None, moe_impl: str = "auto", passes: int = 2,
                  remat: bool = False, q_chunk: int | None = None, retry: bool = False,
                  layer_sharding=None) -> dict:
    """Teacher-forced PDT over P examples × K streams.

    batch: tokens [P, K, T] int32 (prompt + stream target, right-padded), lengths [P, K],
      target_start [P, K] (first target position), plan_ids [P, S] (catalog ids; 0 = null),
      optional snapshot0 [P, N] (default: the planner's projection of plan_ids),
      optional teacher_notes [P, K, U, N] (needed for pass_a="teacher").
    Returns float32 arrays: lm_logits [B, T, V]; planner_logits [P, S, V_p]; snapshot0 [P, N];
      bus_notes [P, K, U, N] (pass n − 1's speculation notes, what the last pass read); notes and
      speculative_notes [P, K, U, N] (pass n's heads); block_present [P, K, U];
      coverage_logits [P, K, U, S] (per block end); readiness_logits [P, K, U];
      stream_logits [P, K, K]; window_mask [B, T, W]; hidden [B, T, D].
    ``retry``: one more pass, without gradients except the agreement head's, in which every block
    reads the window its retry would (``retry_window_mask``, pass n − 1's notes): adds
    ``retry_readiness_logits``, ``retry_window_size`` and ``retry_differs`` [P, K, U]. Like the passes
    themselves it approximates inference: the blocks before v read their retry windows too (at
    inference they were committed with their own). ``layer_sharding``: ``trunk.model.prefill``'s.
    """
    sc, K = cfg.sidecar, cfg.K
    tokens = jnp.asarray(batch["tokens"])
    P, _, T = tokens.shape
    B = P * K
    U = (T - 1) // sc.block_size + 1
    ids, lengths = _rows(tokens, P, K), _rows(jnp.asarray(batch["lengths"]), P, K)
    start = _rows(jnp.asarray(batch["target_start"]), P, K)
    in_row = jnp.arange(T)[None, :] < lengths[:, None]
    block = jnp.where(in_row, block_index(T, start, sc.block_size), -1)
    hooks = cfg.hooks()
    gate_B = jnp.full((B,), gate, jnp.float32)
    plan_ids = jnp.asarray(batch["plan_ids"])

    def run(window, mask_BxTxW, trunk_p=trunk_params, side_p=sidecar_params):
        notes_BxWxN, entries_BxW = window
        ctx = HookContext(params=side_p, notes=notes_BxWxN, mask=mask_BxTxW, entries=entries_BxW, gate=gate_B,
                          q_chunk=q_chunk)
        hidden, _ = trunk_model.prefill(trunk_p, ids, lengths, cfg=cfg.trunk, hooks=hooks, ctx=ctx,
                                        moe_impl=moe_impl, remat=remat, q_chunk=q_chunk,
                                        layer_sharding=layer_sharding)
        return hidden

    snapshot0 = batch.get("snapshot0")
    if snapshot0 is None:
        snapshot0 = heads.plan_snapshot(sidecar_params["plan_embed"], sidecar_params["plan_to_notes"], plan_ids)
    snapshot0 = jnp.asarray(snapshot0, jnp.float32)

    # Pass 1 reads snapshot 0 alone, or the teacher's notes (ARCHITECTURE.md D6).
    teacher = batch.get("teacher_notes")
    if teacher is not None:
        teacher = jnp.asarray(teacher, jnp.float32)
    if passes < 1:
        raise ValueError(f"forward_train: passes must be >= 1, found {passes}")
    if pass_a == "snapshot0":
        window = (jnp.repeat(snapshot0[:, None, :], K, axis=0), jnp.full((B, 1), K, jnp.int32))
        mask = (block >= 0)[:, :, None]
        bus_notes = jnp.zeros((P, K, U, sc.notes_dim), jnp.float32)
    elif pass_a == "teacher":
        if teacher is None:
            raise ValueError("forward_train: pass_a='teacher' needs batch['teacher_notes'] [P, K, U, N]")
        bus_notes = teacher
        window = _window_notes(snapshot0, teacher, K)
        bus_present = jnp.any(teacher != 0, axis=-1)
        mask = training_window_mask(block, bus_present, sc, visible_producers)
    else:
        raise ValueError(f"pass_a: expected 'snapshot0' or 'teacher', found {pass_a!r}")
    hidden = run(window, mask)
    # A note is published when its block is complete (the runtime's cadence: every τ tokens), so a
    # stream's last, partial block never reaches the bus.
    complete = (jnp.sum(block[:, :, None] == jnp.arange(U), axis=1) >= sc.block_size).reshape(P, K, U)
    for _ in range(passes - 1):
        # Pass i: every stream decodes against the windows built from pass i − 1's notes.
        pooled_prev, present_B = heads.block_pool(hidden, block, U)
        bus_notes = heads.note_head(sidecar_params["spec_head"], pooled_prev).reshape(P, K, U, -1)
        if stop_grad_notes:
            bus_notes = jax.lax.stop_gradient(bus_notes)
        bus_notes, bus_present = edit_bus(bus_notes, complete & present_B.reshape(P, K, U), batch, teacher)
        mask = training_window_mask(block, bus_present, sc, visible_producers)
        window = _window_notes(snapshot0, bus_notes, K)
        hidden = run(window, mask)
    window_b, mask_b = window[0], mask
    pooled, present_B = heads.block_pool(hidden, block, U)
    present = present_B.reshape(P, K, U)
    lm_logits = trunk_model.unembed(trunk_params, hidden)
    notes = heads.note_head(sidecar_params["notes_head"], pooled)
    spec = heads.note_head(sidecar_params["spec_head"], pooled)
    # The last token of each block: coverage is read there (prefix up to the block's end).
    t = jnp.arange(T)[None, :, None]
    is_block = block[:, :, None] == jnp.arange(U)[None, None, :]
    ends = jnp.where(present_B, jnp.max(jnp.where(is_block, t, -1), axis=1), -1)
    item_ids = jnp.repeat(plan_ids, K, axis=0)
    target_mask = block >= 0
    coverage = coverage_logits(sidecar_params, item_ids, hidden, target_mask, ends, sc.coverage_heads)
    # Readiness of block v sees the window its tokens read (the mask at the block's first token).
    first = jnp.where(present_B, jnp.argmax(is_block, axis=1), 0)                         # [B, U]
    block_masks = jnp.take_along_axis(mask_b, first[:, :, None], axis=1)                 # [B, U, W]
    summary = heads.window_summary(window_b[:, None, :, :], block_masks)                  # [B, U, N]
    readiness = heads.readiness_logit(sidecar_params["agree"], pooled, summary, coverage, spec)
    streams = heads.stream_logits(sidecar_params["stream_cls"], hidden, target_mask)
    shape = lambda x: x.reshape(P, K, *x.shape[1:])
    retry_out = {}
    if retry:
        if passes < 2 and pass_a != "teacher":
            raise ValueError("forward_train: retry pairs read notes; they need passes >= 2 or pass_a='teacher'")
        sg = jax.lax.stop_gradient
        side_sg = sg(sidecar_params)
        mask_r = retry_window_mask(block, bus_present, sc, visible_producers)
        hidden_r = run(sg(window), mask_r, sg(trunk_params), side_sg)
        pooled_r, _ = heads.block_pool(hidden_r, block, U)
        cov_r = coverage_logits(side_sg, item_ids, hidden_r, target_mask, ends, sc.coverage_heads)
        masks_r = jnp.take_along_axis(mask_r, first[:, :, None], axis=1)
        summary_r = heads.window_summary(sg(window_b)[:, None, :, :], masks_r)
        ready_r = heads.readiness_logit(sidecar_params["agree"], pooled_r, summary_r, cov_r,
                                        heads.note_head(side_sg["spec_head"], pooled_r))
        differs = jnp.any(masks_r != block_masks, axis=-1) & present_B
        retry_out = {"retry_readiness_logits": shape(ready_r), "retry_differs": shape(differs),
                     "retry_window_size": shape(masks_r.sum(-1).astype(jnp.int32))}

    # The planner reads the prompt tokens of all the example's stream rows.
    prompt_mask = (jnp.arange(T)[None, :] < start[:, None]) & in_row
    planner = heads.planner_logits(sidecar_params["planner"], sidecar_params["plan_embed"],
                                   hidden.reshape(P, K * T, -1), prompt_mask.reshape(P, K * T))
    return {
        "lm_logits": lm_logits, "hidden": hidden, "planner_logits": planner, "snapshot0": snapshot0,
        "bus_notes": bus_notes, "notes": shape(notes), "speculative_notes": shape(spec),
        "block_present": present, "coverage_logits": shape(coverage), "readiness_logits": shape(readiness),
        "stream_logits": shape(streams), "window_mask": mask_b, **retry_out,
    }


# ---- inference: prefill and one decode step for every row ------------------------------------------

def prefill(trunk_params: dict, sidecar_params: dict, tokens_BxT: jax.Array, lengths_B: jax.Array, *,
            cfg: PDTConfig, max_len: int, slack: int, gate_B: jax.Array, moe_impl: str = "auto"):
    """Encodes the prompts of all rows (windows are empty: snapshot 0 does not exist yet; the stream
    adapters already act). Returns (hidden [B, T, D], KVCache)."""
    B = tokens_BxT.shape[0]
    ctx = HookContext(params=sidecar_params, notes=jnp.zeros((B, 1, cfg.sidecar.notes_dim), jnp.float32),
                      mask=jnp.zeros((B, 1, 1), bool), entries=jnp.zeros((B, 1), jnp.int32), gate=gate_B)
    return trunk_model.prefill(trunk_params, tokens_BxT, lengths_B, cfg=cfg.trunk, max_len=max_len, slack=slack,
                               hooks=cfg.hooks(), ctx=ctx, moe_impl=moe_impl)


def text_vectors(trunk_params: dict, ids_BxT: jax.Array, lengths_B: jax.Array, *, trunk_cfg: TrunkConfig,
                 notes_dim: int) -> jax.Array:
    """Texts → notes-space vectors [B, notes_dim]: the frozen trunk's final hidden states averaged
    over each text's tokens, cut or zero-padded to notes_dim and L2-normalised. The seed README's
    recipe for seed texts, and D6's for teacher notes; a text with no token gives zeros."""
    hidden, _ = trunk_model.prefill(trunk_params, ids_BxT, jnp.maximum(lengths_B, 1), cfg=trunk_cfg)
    m = (jnp.arange(ids_BxT.shape[1])[None, :] < lengths_B[:, None]).astype(jnp.float32)
    mean = jnp.einsum("btd,bt->bd", hidden.astype(jnp.float32), m) / jnp.maximum(m.sum(-1, keepdims=True), 1)
    return pad_or_truncate_l2(mean, notes_dim) * (lengths_B > 0)[:, None]


def window_entries(window, K: int) -> jax.Array:
    """Writer ids of a bus Window's entries ([P, K, W] → [B, W]): the producer, or K for snapshot 0."""
    ids = jnp.where(window.version > 0, window.producer, K)
    return ids.reshape(-1, ids.shape[-1]).astype(jnp.int32)


def decode_step(trunk_params: dict, sidecar_params: dict, cache: KVCache, tokens_B: jax.Array,
                notes_BxWxN: jax.Array, mask_BxW: jax.Array, gate_B: jax.Array, active_B: jax.Array, *,
                cfg: PDTConfig, entries_BxW: jax.Array | None = None, moe_impl: str = "auto"):
    """One token for every row, reading each row's visible window through SNC (``entries``: the
    writer of each note, see ``window_entries``; default: every entry is snapshot 0).
    Returns (hidden [B, D], logits [B, V] float32, cache)."""
    if entries_BxW is None:
        entries_BxW = jnp.full(mask_BxW.shape, cfg.K, jnp.int32)
    ctx = HookContext(params=sidecar_params, notes=notes_BxWxN, mask=mask_BxW[:, None, :], entries=entries_BxW,
                      gate=gate_B)
    return decode.forward(trunk_params, tokens_B, cache, active_B, cfg=cfg.trunk, hooks=cfg.hooks(), ctx=ctx,
                          moe_impl=moe_impl)
