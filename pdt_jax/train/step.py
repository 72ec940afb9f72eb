"""One jitted train step (and an eval step) with explicit shardings on the model's mesh.

    state, metrics = step(state, batch)        # batch leaves [A, P, ...]: A micro-batches

The step scans the A micro-batches, summing the gradient of the trainable leaves only (frozen
leaves get no cotangent), clips the accumulated gradient inside the optimiser, and applies the
update only when the loss and every gradient are finite (otherwise the state is kept, ``skipped``
and ``bad_streak`` count it, and ``first_bad`` names the first non-finite term: the host stops the
run after N in a row). The state is donated. ``StepStatic`` is everything that shapes the program;
one compile per (static, bucket).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from pdt_jax import model as pdt
from pdt_jax import sharding
from pdt_jax.runtime import program
from pdt_jax.train import forward as train_forward
from pdt_jax.train import losses
from pdt_jax.train import state as state_lib
from pdt_jax.trunk import model as trunk_model

# document: trunk pretraining (configs/pretrain_tiny.py) — the trunk alone reads the whole article
# once (prompt + every section in order: the KD rows of ``data.RowSpec.article``) and the LM loss
# scores every section's tokens; the sidecar does not run.
FORMS = ("teacher", "passes", "exact", "document")
# Sentinels of ``first_bad`` beyond the loss terms' indices.
BAD_GRAD = len(losses.TERMS)


@dataclasses.dataclass(frozen=True)
class StepStatic:
    cfg: pdt.PDTConfig
    chosen: tuple[str, ...]                       # trainable parameter paths
    weights: tuple[tuple[str, float], ...]        # loss weights (non-zero terms are computed)
    form: str = "passes"                          # teacher | passes | exact (train/forward.py)
    passes: int = 2
    remat: bool = False
    gate: float = 1.0
    kd_temperature: float = 1.0
    bus_mix: float = 0.0
    stream_dropout: float = 0.0
    note_noise: float = 0.0
    moe_impl: Any = "auto"                        # a trunk/moe.py impl name, or moe.PerShard (FSDP mesh)
    loss_chunk: int = 256                         # LM CE / KD computed this many positions at a time
    q_chunk: int = 0                              # trunk attention and SNC this many queries at a time (0: all)
    layer_sharding: Any = None                    # per trunk layer, its parameters' shardings (Steps sets it)

    @classmethod
    def from_stage(cls, stage, cfg: pdt.PDTConfig, chosen, moe_impl: Any = "auto") -> "StepStatic":
        """The static part of a stage's step from its config block (configs/stages.py)."""
        f = stage.forward
        return cls(cfg=cfg, chosen=tuple(chosen), weights=tuple(sorted((k, float(v)) for k, v in stage.losses.items())),
                   form=f.form, passes=int(f.passes), remat=bool(f.remat), q_chunk=int(f.q_chunk),
                   gate=float(stage.gate), kd_temperature=float(stage.kd_temperature), bus_mix=float(stage.bus_mix),
                   stream_dropout=float(stage.stream_dropout), note_noise=float(stage.note_noise), moe_impl=moe_impl)

    @property
    def weight_map(self) -> dict[str, float]:
        return dict(self.weights)


def model_forward(static: StepStatic, params, batch, rng):
    """The stage's forward over one micro-batch (``batch`` leaves [P, ...])."""
    cfg, side, trunk = static.cfg, params["sidecar"], params["trunk"]
    memory = dict(remat=static.remat, q_chunk=static.q_chunk or None, layer_sharding=static.layer_sharding)
    if static.form == "document":
        return {"hidden": document_hidden(static, trunk, batch, article=True)}
    if static.form == "teacher":
        return pdt.forward_train(trunk, side, batch, cfg=cfg, gate=static.gate, pass_a="teacher", passes=1,
                                 moe_impl=static.moe_impl, **memory)
    b = regularisers(static, batch, rng)
    retry = static.weight_map.get("retry", 0.0) > 0   # each block's retry pair (losses "retry")
    if static.form == "exact":
        return train_forward.forward_exact(trunk, side, b, cfg=cfg, gate=static.gate, remat=static.remat,
                                           moe_impl=static.moe_impl, retry=retry)
    return pdt.forward_train(trunk, side, b, cfg=cfg, gate=static.gate, passes=static.passes, moe_impl=static.moe_impl,
                             retry=retry, **memory)


def regularisers(static: StepStatic, batch, rng) -> dict:
    """The batch with the stage's bus regularisers drawn for this micro-batch (``model.edit_bus``)."""
    cfg = static.cfg
    P, K = batch["tokens"].shape[:2]
    b = dict(batch)
    k_mix, k_drop, k_noise = jax.random.split(rng, 3)
    if static.bus_mix > 0:
        b["bus_mix"] = jax.random.bernoulli(k_mix, static.bus_mix, (P,))
    if static.stream_dropout > 0:
        b["producer_keep"] = ~jax.random.bernoulli(k_drop, static.stream_dropout, (P, K))
    if static.note_noise > 0:
        U = b["teacher_notes"].shape[2] if "teacher_notes" in b else (b["tokens"].shape[-1] - 1) // cfg.sidecar.block_size + 1
        b["note_noise"] = static.note_noise * jax.random.normal(k_noise, (P, K, U, cfg.sidecar.notes_dim))
    return b


def document_hidden(static: StepStatic, trunk, batch, article: bool = False):
    """The trunk (no sidecar) over the KD rows, its final hidden states gathered at the student's
    positions: [B, T, D] (the losses unembed them chunk by chunk). Position t of a student row
    predicts the same next token as its KD-row position, so the student's LM targets score it.
    ``article``: every stream's KD row is the same whole article (``data.RowSpec.article``, trunk
    pretraining), so the trunk reads it once and each stream's positions are gathered from it."""
    tok, lens = batch["kd_tokens"], batch["kd_lengths"]
    P, K, Tk = tok.shape
    if article:
        tok, lens = tok[:, -1:], lens[:, -1:]
    R = tok.shape[1]
    hidden, _ = trunk_model.prefill(trunk, tok.reshape(P * R, Tk), lens.reshape(-1), cfg=static.cfg.trunk,
                                    moe_impl=static.moe_impl, remat=static.remat, q_chunk=static.q_chunk or None,
                                    layer_sharding=static.layer_sharding)
    hidden = hidden.reshape(P, R, Tk, -1)
    idx = jnp.clip(batch["kd_index"], 0, Tk - 1)                                 # [P, K, T]
    rows = jnp.broadcast_to(hidden, (P, K, Tk, hidden.shape[-1])) if article else hidden
    return jnp.take_along_axis(rows, idx[..., None], axis=2).reshape(P * K, idx.shape[-1], -1)


def kd_teacher_hidden(static: StepStatic, trunk, batch):
    """The frozen trunk as the KD teacher (D7): ``document_hidden`` without gradients."""
    return jax.lax.stop_gradient(document_hidden(static, trunk, batch))


def loss_fn(trainable, params, batch, rng, static: StepStatic):
    params = state_lib.merge(params, trainable)
    out = model_forward(static, params, batch, rng)
    weights = static.weight_map
    kd = kd_teacher_hidden(static, params["trunk"], batch) if weights.get("kd", 0) else None
    trunk = params["trunk"]
    total, terms = losses.compute(out, batch, weights, kd_hidden=kd, kd_temperature=static.kd_temperature,
                                  unembed=lambda h: trunk_model.unembed(trunk, h), chunk=static.loss_chunk)
    return total, (terms, out)


def _first_bad(terms: dict, grads_finite) -> jax.Array:
    idx = jnp.int32(-1)
    for i, name in reversed(list(enumerate(losses.TERMS))):
        if name in terms:
            idx = jnp.where(jnp.isfinite(terms[name]), idx, i)
    return jnp.where((idx < 0) & ~grads_finite, BAD_GRAD, idx)


def train_step(static: StepStatic, tx: optax.GradientTransformation, sched, state: state_lib.TrainState, batch):
    program.TRACE_COUNTS["train_step"] += 1
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
    trainable = state_lib.select(state.params, static.chosen)
    A = jax.tree.leaves(batch)[0].shape[0]
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(acc, xs):
        mb, key = xs
        (total, (terms, _)), g = grad_fn(trainable, state.params, mb, key, static)
        acc_g, acc_total, acc_terms = acc
        return (jax.tree.map(jnp.add, acc_g, g), acc_total + total,
                {k: acc_terms[k] + v for k, v in terms.items()}), None

    zeros_terms = {k: jnp.zeros((), jnp.float32) for k in static.weight_map if static.weight_map[k]}
    init = (jax.tree.map(jnp.zeros_like, trainable), jnp.zeros((), jnp.float32), zeros_terms)
    (g, total, terms), _ = jax.lax.scan(micro, init, (batch, jax.random.split(step_rng, A)))
    g = jax.tree.map(lambda x: x / A, g)
    total, terms = total / A, {k: v / A for k, v in terms.items()}
    grads_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(g)]))
    finite = grads_finite & jnp.isfinite(total)
    updates, new_opt = tx.update(g, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_params = state_lib.merge(state.params, keep(new_trainable, trainable))
    new_state = state.replace(
        step=state.step + 1, params=new_params, opt_state=keep(new_opt, state.opt_state),
        rng=jax.random.key_data(rng), skipped=state.skipped + (~finite).astype(jnp.int32),
        bad_streak=jnp.where(finite, 0, state.bad_streak + 1))
    label_tokens = jnp.sum(losses.lm_targets(jax.tree.map(lambda x: x[0], batch))[1])
    metrics = {"loss": total, **{f"loss/{k}": v for k, v in terms.items()}, "grad_norm": optax.global_norm(g),
               "lr": sched(state.step), "finite": finite, "first_bad": _first_bad(terms, grads_finite),
               "tokens": jnp.sum(batch["lengths"]), "label_tokens": label_tokens * A,
               **gate_values(new_params["sidecar"])}
    return new_state, metrics


def gate_values(side) -> dict:
    """sigmoid of every instrumented layer's SNC and adapter gate (scalars)."""
    out = {}
    for i, lp in enumerate(side["layers"]):
        out[f"gates/snc_{i}"] = jax.nn.sigmoid(lp["snc_gate"])
        out[f"gates/adapter_{i}"] = jax.nn.sigmoid(lp["adapter_gate"])
    return out


def eval_step(static: StepStatic, params, batch):
    """Loss terms and what the validation metrics need, on one micro-batch (leaves [P, ...])."""
    program.TRACE_COUNTS["eval_step"] += 1
    total, (terms, out) = loss_fn(state_lib.select(params, static.chosen), params, batch, jax.random.key(0), static)
    if static.form == "document":   # the trunk alone: no readiness or coverage to validate
        return {"loss": total, **{f"loss/{k}": v for k, v in terms.items()}}
    mask = batch["block_mask"] & out["block_present"]
    cov_mask = mask[..., None] & batch["coverage_item_mask"][:, None, None, :]
    retry = {}
    if "retry_readiness_logits" in out:
        retry = {"retry_prob": jax.nn.sigmoid(out["retry_readiness_logits"]), "retry_label": batch["readiness_retry"],
                 "retry_mask": mask & out["retry_differs"]}
    return {"loss": total, **{f"loss/{k}": v for k, v in terms.items()},
            "readiness_prob": jax.nn.sigmoid(out["readiness_logits"]), "readiness_label": batch["readiness"],
            "readiness_mask": mask, "coverage_prob": jax.nn.sigmoid(out["coverage_logits"]),
            "coverage_label": batch["coverage"], "coverage_mask": cov_mask, **retry}


# ---- shardings ------------------------------------------------------------------------------------

def batch_axes(ndim: int) -> tuple:
    """Logical axes of a batch leaf [A, P, ...]: the examples P over the ``batch`` rule."""
    return (None, "batch") + (None,) * (ndim - 2)


def state_shardings(abstract_state: state_lib.TrainState, cfg: pdt.PDTConfig, mesh, rules):
    """Parameters by their declared axes; each optimiser moment like its parameter (the moments
    are dicts keyed by parameter path); counters and the rng replicated."""
    trunk_sh, side_sh = program.param_shardings(cfg, mesh, rules)
    params_sh = {"sidecar": side_sh, "trunk": trunk_sh}
    is_sh = lambda x: isinstance(x, jax.sharding.Sharding)
    by_path = {state_lib.path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(params_sh, is_leaf=is_sh)[0]}
    shapes = {state_lib.path_str(p): tuple(x.shape)
              for p, x in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]}
    rep = sharding.replicated(mesh)

    def opt_leaf(path, leaf):
        key = getattr(path[-1], "key", None) if path else None
        if isinstance(key, str) and key in by_path and shapes[key] == tuple(leaf.shape):
            return by_path[key]
        return rep
    opt_sh = jax.tree_util.tree_map_with_path(opt_leaf, abstract_state.opt_state)
    return state_lib.TrainState(step=rep, params=params_sh, opt_state=opt_sh, rng=rep, skipped=rep, bad_streak=rep)


class Steps:
    """The train and eval steps of one stage, jitted with explicit in/out shardings (built at the
    first batch, when the batch's fields are known; one compile per batch bucket)."""

    def __init__(self, static: StepStatic, tx, sched, abstract_state, mesh, rules):
        self.state_sharding = state_shardings(abstract_state, static.cfg, mesh, rules)
        if mesh.size > 1 and static.layer_sharding is None:
            # Each trunk layer's parameters held to their sharding inside the layer (prefill's
            # layer_sharding): FSDP gathers them per layer, inside remat.
            static = dataclasses.replace(static, layer_sharding=tuple(self.state_sharding.params["trunk"]["layers"]))
        self.static, self.tx, self.sched, self.mesh, self.rules = static, tx, sched, mesh, rules
        self._train = self._eval = None

    def _shardings(self, batch: dict) -> dict:
        return {n: self.rules.sharding(x.shape, batch_axes(x.ndim), self.mesh, f"batch field {n!r}")
                for n, x in batch.items()}

    def _build(self, batch: dict):
        rep = sharding.replicated(self.mesh)
        b_sh = self._shardings(batch)
        eval_sh = {n: jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*s.spec[1:]))
                   for n, s in b_sh.items()}
        self._train = jax.jit(functools.partial(train_step, self.static, self.tx, self.sched),
                              in_shardings=(self.state_sharding, b_sh), out_shardings=(self.state_sharding, rep),
                              donate_argnums=(0,))
        self._eval = jax.jit(functools.partial(eval_step, self.static),
                             in_shardings=(self.state_sharding.params, eval_sh), out_shardings=rep)

    def put_batch(self, batch: dict) -> dict:
        sh = self._shardings(batch)   # checks that the mesh divides this batch's shapes
        return {n: jax.device_put(x, sh[n]) for n, x in batch.items()}

    def train(self, state, batch: dict):
        if self._train is None:
            self._build(batch)
        return self._train(state, self.put_batch(batch))

    def lower_train(self, abstract_state, abstract_batch: dict):
        """The train step lowered on abstract inputs (memory plan: nothing allocated)."""
        if self._train is None:
            self._build(abstract_batch)
        return self._train.lower(abstract_state, abstract_batch)

    def evaluate(self, params, batch: dict):
        """batch leaves [1, P, ...] (one micro-batch)."""
        if self._eval is None:
            self._build(batch)
        b = self.put_batch(batch)
        return self._eval(params, jax.tree.map(lambda x: x[0], b))
