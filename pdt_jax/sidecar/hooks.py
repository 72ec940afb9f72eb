"""The sidecar plugged into the trunk's hook points (ARCHITECTURE.md principle 3, D3):

    after self-attention of an instrumented layer:  h += g · sigmoid(λ_snc) · SNC(h, window)
    after the MLP of an instrumented layer:         h += g · sigmoid(λ_ad)  · Adapter_stream(h)

``g`` is the runtime gate per row; with g = 0 both residuals are exactly zero and PDT is the trunk.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax

from pdt_jax.sidecar.adapters import adapter
from pdt_jax.sidecar.snc import snc, snc_attend, snc_keys_values


@flax.struct.dataclass
class HookContext:
    params: dict          # sidecar params
    notes: jax.Array      # [B, W, N] the notes each row may read
    mask: jax.Array       # [B, T or 1, W] bool: which notes each token may read
    entries: jax.Array    # [B, W] int32: producer stream of each note, K for snapshot 0
    gate: jax.Array       # [B] float32 runtime gate g
    # Optional: per instrumented layer, SNC's (keys, values) of ``notes`` (``with_snc_kv``). A decoder
    # that reads one window for several tokens projects it once instead of once per token.
    snc_kv: Any = None
    # Training's memory knob: SNC over this many query positions at a time (None: all).
    q_chunk: int | None = flax.struct.field(pytree_node=False, default=None)

    def with_snc_kv(self, hooks: "SidecarHooks") -> "HookContext":
        entry = self.params["entry_embed"][self.entries]
        kv = tuple(snc_keys_values(self.params["layers"][j]["snc"], self.notes, entry) for j in range(len(hooks.layers)))
        return self.replace(snc_kv=kv)


@dataclasses.dataclass(frozen=True)
class SidecarHooks:
    layers: tuple[int, ...]  # instrumented trunk layers, in order (index j ↔ params["layers"][j])
    num_streams: int

    def _slot(self, layer: int) -> int | None:
        return self.layers.index(layer) if layer in self.layers else None

    def after_attention(self, layer: int, h: jax.Array, ctx: HookContext) -> jax.Array:
        j = self._slot(layer)
        if j is None:
            return h
        lp = ctx.params["layers"][j]
        if ctx.snc_kv is not None:
            delta = snc_attend(lp["snc"], h, *ctx.snc_kv[j], ctx.mask)
        else:
            delta = snc(lp["snc"], h, ctx.notes, ctx.mask, ctx.params["entry_embed"][ctx.entries], q_chunk=ctx.q_chunk)
        scale = ctx.gate[:, None, None] * jax.nn.sigmoid(lp["snc_gate"])
        return h + (scale * delta).astype(h.dtype)

    def after_mlp(self, layer: int, h: jax.Array, ctx: HookContext) -> jax.Array:
        j = self._slot(layer)
        if j is None:
            return h
        lp = ctx.params["layers"][j]
        delta = adapter(lp["adapter"], h, self.num_streams)
        scale = ctx.gate[:, None, None] * jax.nn.sigmoid(lp["adapter_gate"])
        return h + (scale * delta).astype(h.dtype)
