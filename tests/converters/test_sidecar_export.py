"""A trained-looking sidecar goes to PyTorch and back bit for bit; the torch file is a plain
state_dict with the sidecar's own names; a file that is not a PDT export is refused by name."""
import jax
import numpy as np
import pytest
import torch
from acting import acting_sidecar

from converters import sidecar as conv
from pdt_jax import config_files
from pdt_jax.sidecar.checkpoint import load_sidecar, save_sidecar


def test_torch_round_trip_is_bit_exact(tmp_path):
    cfg = config_files.pdt_config(config_files.load("configs/model/pdt.py:tiny"))
    side = jax.tree.map(np.asarray, acting_sidecar(cfg, jax.random.key(1), jax.random.key(2)))
    src = tmp_path / "export"
    src.mkdir()
    save_sidecar(str(src / "sidecar.safetensors"), side, cfg.trunk, cfg.sidecar)
    assert conv.main(["export", "--checkpoint", str(src), "--format", "torch", "--out", str(tmp_path / "s.pt")]) == 0
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert "layers.0.snc.o" in state and state["layers.0.snc.o"].shape == side["layers"][0]["snc"]["o"].shape
    out = tmp_path / "back" / "sidecar.safetensors"
    assert conv.main(["import", "--torch", str(tmp_path / "s.pt"), "--out", str(out)]) == 0
    back = load_sidecar(str(out), cfg.trunk, cfg.sidecar)
    for a, b in zip(jax.tree.leaves(side), jax.tree.leaves(back)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # A .pt whose metadata file is missing, or a file that is not a sidecar, is refused by name.
    (tmp_path / "s.pt.json").unlink()
    assert conv.main(["import", "--torch", str(tmp_path / "s.pt"), "--out", str(out)]) == 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="bad.safetensors"):
        conv.export(str(bad), str(tmp_path / "x.pt"), "torch")
