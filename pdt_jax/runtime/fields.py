"""What a round sends back to the host: one table of fields, read by the round program (packing),
the device engine (unpacking) and the replay artifact (storing and serving) alike.

A host transfer costs about 10 µs per array, so the fields travel in two packed arrays, one per
dtype: ``floats`` [B, F] float32 and ``ints`` [B, I] int32, columns in table order.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    kind: str    # "float", "int" or "bool" (bools travel as int32)
    width: str   # "tau", "notes", "slots" or "one" (a scalar per row)
    doc: str


ROUND_FIELDS = (
    Field("tokens", "int", "tau", "[B, τ] sampled ids (pad where not produced)"),
    Field("produced", "bool", "tau", "[B, τ] whether the row wrote token i this round"),
    Field("margins", "float", "tau", "[B, τ] top-2 logit margin of each sampling step"),
    Field("note", "float", "notes", "[B, N] provisional note (speculation head over tokens since the last note)"),
    Field("coverage", "float", "slots", "[B, S] coverage logits after this round"),
    Field("readiness", "float", "one", "[B] readiness logit r = AgreeHead(H, W, c, n)"),
    Field("window_size", "int", "one", "[B] notes visible to the row this round"),
    Field("attended_delta", "float", "one", "[B] ‖attended − base‖ of the last step's logits (0 when α = 1)"),
)
NAMES = tuple(f.name for f in ROUND_FIELDS)


def _widths(tau: int, notes_dim: int, slots: int) -> dict:
    return {"tau": tau, "notes": notes_dim, "slots": slots, "one": 1}


def pack(out: dict):
    """Device side: {name: [B, ...] array} → (floats [B, F], ints [B, I])."""
    cols = lambda x: x.reshape(x.shape[0], -1)
    floats = [cols(out[f.name].astype(jnp.float32)) for f in ROUND_FIELDS if f.kind == "float"]
    ints = [cols(out[f.name].astype(jnp.int32)) for f in ROUND_FIELDS if f.kind != "float"]
    return jnp.concatenate(floats, axis=1), jnp.concatenate(ints, axis=1)


def unpack(floats: np.ndarray, ints: np.ndarray, tau: int, notes_dim: int, slots: int) -> dict:
    """Host side: the packed arrays → {name: numpy array} (scalars per row as [B])."""
    widths = _widths(tau, notes_dim, slots)
    at = {"float": 0, "int": 0}
    out = {}
    for f in ROUND_FIELDS:
        group = "float" if f.kind == "float" else "int"
        packed = floats if group == "float" else ints
        n = widths[f.width]
        x = packed[:, at[group]:at[group] + n]
        at[group] += n
        x = x[:, 0] if f.width == "one" else x
        out[f.name] = x.astype(bool) if f.kind == "bool" else x
    return out
