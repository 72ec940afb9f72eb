"""Checkpoints (Orbax) and the sidecar export.

``<workdir>/checkpoints/<step>/`` — an Orbax ``CheckpointManager`` (async, keep the last N; every
stage runs in its own workdir, so each stage's final step is kept with it) holding:

* ``state``: the sidecar parameters, the optimiser state (trainable leaves only), step, rng and the
  skip counters; the trunk only when the stage trains it (otherwise it is read, never written,
  from its converted checkpoint);
* ``data``: the grain iterator's state, so a resumed run draws the same next batch;
* ``meta``: stage, trainable set and the config's digest (a resume under a different config is
  refused, naming what differs).

A state with a non-finite parameter is never written. ``export_sidecar`` writes what
``launch/infer.py --checkpoint`` reads: ``sidecar.safetensors`` (config, hashing metadata and the
calibrated readiness threshold γ in its metadata) and ``sidecar_config.json``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from pdt_jax.sidecar.checkpoint import save_sidecar
from pdt_jax.train import state as state_lib


class CheckpointError(ValueError):
    pass


@jax.jit
def _finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def all_finite(tree) -> bool:
    """Every floating leaf finite (one compiled reduction per tree structure)."""
    return bool(jax.device_get(_finite(tree)))


class Checkpoints:
    def __init__(self, workdir: Path, keep: int, save_trunk: bool, async_save: bool = True):
        self.dir = Path(workdir).absolute() / "checkpoints"
        self.save_trunk = save_trunk
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                                            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.dir, options=opts, item_names=("state", "data", "meta"))

    def _payload(self, state: state_lib.TrainState):
        params = state.params if self.save_trunk else {"sidecar": state.params["sidecar"]}
        return {"step": state.step, "params": params, "opt_state": state.opt_state, "rng": state.rng,
                "skipped": state.skipped, "bad_streak": state.bad_streak}

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: state_lib.TrainState, data_state: dict, meta: dict, force: bool = False) -> bool:
        if not all_finite(state.params):
            raise CheckpointError(f"step {step}: a parameter is not finite; refusing to checkpoint it")
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(self._payload(state)), data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, step: int, like: state_lib.TrainState, shardings: state_lib.TrainState):
        """(state, data iterator state, meta) of ``step``; ``like`` gives the structure and the
        trunk when it was not saved."""
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self._payload(like),
                                self._payload(shardings))
        try:
            got = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        except Exception as e:  # Orbax raises many kinds; name the directory and what was expected
            raise CheckpointError(f"{self.dir / str(step)}: cannot restore the train state "
                                  f"({type(e).__name__}: {str(e)[:400]})") from None
        s = got["state"]
        params = dict(like.params, **s["params"])
        state = like.replace(step=s["step"], params=params, opt_state=s["opt_state"], rng=s["rng"],
                             skipped=s["skipped"], bad_streak=s["bad_streak"])
        return state, got["data"], got["meta"]

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def export_sidecar(out_dir: Path, params: dict, cfg, readiness_threshold: float | None) -> Path:
    """``sidecar.safetensors`` + ``sidecar_config.json`` for ``launch/infer.py --checkpoint``; γ
    (when calibrated) becomes the exported config's ``readiness_threshold``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    side_cfg = cfg.sidecar
    if readiness_threshold is not None:
        side_cfg = dataclasses.replace(side_cfg, readiness_threshold=float(readiness_threshold))
    if not all_finite(params["sidecar"]):
        raise CheckpointError("export: a sidecar parameter is not finite")
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params["sidecar"])
    path = out_dir / "sidecar.safetensors"
    save_sidecar(str(path), host, cfg.trunk, side_cfg)
    tmp = out_dir / "sidecar_config.json.tmp"
    tmp.write_text(json.dumps({"sidecar": side_cfg.to_mapping(), "hashing": side_cfg.hashing_metadata(),
                               "readiness_threshold": side_cfg.readiness_threshold}, indent=1, default=list))
    os.replace(tmp, out_dir / "sidecar_config.json")
    return path
