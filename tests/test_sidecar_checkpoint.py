"""Sidecar parameters round-trip through safetensors; a checkpoint refuses a config it does not fit."""
import dataclasses

import jax
import numpy as np
import pytest

from pdt_jax import config_files
from pdt_jax import model as pdt
from pdt_jax.sidecar.checkpoint import load_sidecar, save_sidecar
from pdt_jax.trunk import CheckpointError


@pytest.fixture(scope="module")
def cfg():
    return config_files.pdt_config(config_files.load("configs/model/pdt.py:tiny"))


def test_round_trip_is_exact(cfg, tmp_path):
    side = pdt.init_sidecar(cfg, jax.random.key(3))
    save_sidecar(str(tmp_path / "s.safetensors"), side, cfg.trunk, cfg.sidecar)
    back = load_sidecar(str(tmp_path / "s.safetensors"), cfg.trunk, cfg.sidecar)
    jax.tree.map(np.testing.assert_array_equal, side, back)


@pytest.mark.parametrize("change,message", [
    (dict(plan_hash_salt="other"), "plan hashing metadata"),
    (dict(instrumented_layers=(0,), top_k_layers=1), "instrumented layers"),
    (dict(stream_names=("stream_2", "stream_1", "stream_3")), "stream_names"),
    (dict(notes_dim=16), "has shape"),
])
def test_mismatched_config_is_refused(cfg, tmp_path, change, message):
    side = pdt.init_sidecar(cfg, jax.random.key(3))
    save_sidecar(str(tmp_path / "s.safetensors"), side, cfg.trunk, cfg.sidecar)
    with pytest.raises(CheckpointError, match=message):
        load_sidecar(str(tmp_path / "s.safetensors"), cfg.trunk, dataclasses.replace(cfg.sidecar, **change))
