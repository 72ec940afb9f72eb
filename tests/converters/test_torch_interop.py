"""A nested parameter pytree ↔ a torch .pt state_dict with dotted names."""
import ml_dtypes
import numpy as np
import pytest
import torch

from converters.torch_interop import flatten, load_torch, save_torch, unflatten
from pdt_jax.trunk import CheckpointError


def sidecar_like():
    rng = np.random.default_rng(0)
    return {"snc": {"layers": [{"q": {"weight": rng.normal(size=(4, 3)).astype(np.float32)}} for _ in range(17)]},
            "heads": {"plan": {"kernel": rng.normal(size=(3, 5)).astype(ml_dtypes.bfloat16),
                               "bias": np.arange(5, dtype=np.int32)}}}


def test_names_and_round_trip(tmp_path):
    tree = sidecar_like()
    names = flatten(tree)
    assert "snc.layers.16.q.weight" in names and "heads.plan.kernel" in names and len(names) == 19
    path = str(tmp_path / "sidecar.pt")
    save_torch(tree, path)
    state = torch.load(path, weights_only=True)
    assert state["heads.plan.kernel"].dtype == torch.bfloat16
    assert torch.equal(state["snc.layers.16.q.weight"], torch.from_numpy(tree["snc"]["layers"][16]["q"]["weight"]))
    for back in (load_torch(path), load_torch(path, like=tree)):
        assert isinstance(back["snc"]["layers"], list) and len(back["snc"]["layers"]) == 17
        for name, value in flatten(back).items():
            assert value.dtype == names[name].dtype and value.tobytes() == names[name].tobytes(), name
    # A torch module with the same names loads it strictly.
    module = torch.nn.ModuleDict({"layers": torch.nn.ModuleList([torch.nn.ModuleDict(
        {"q": torch.nn.Linear(3, 4, bias=False)}) for _ in range(17)])})
    module.load_state_dict({k[len("snc."):]: v for k, v in state.items() if k.startswith("snc.")}, strict=True)


def test_unflatten_inverts_flatten():
    tree = sidecar_like()
    assert flatten(unflatten(flatten(tree))).keys() == flatten(tree).keys()


def test_checked_against_a_template(tmp_path):
    tree = sidecar_like()
    path = str(tmp_path / "s.pt")
    save_torch(tree, path)
    other = sidecar_like()
    other["heads"]["plan"]["bias"] = np.zeros(6, np.int32)
    with pytest.raises(CheckpointError, match=r"'heads.plan.bias' is \(5,\) int32, expected \(6,\) int32"):
        load_torch(path, like=other)
    del other["heads"]["plan"]["bias"]
    with pytest.raises(CheckpointError, match="unknown tensor 'heads.plan.bias'"):
        load_torch(path, like=other)
    other = sidecar_like()
    other["heads"]["extra"] = np.zeros(2, np.float32)
    with pytest.raises(CheckpointError, match="missing tensor 'heads.extra'"):
        load_torch(path, like=other)


def test_dotted_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="without dots"):
        save_torch({"a.b": np.zeros(2)}, str(tmp_path / "x.pt"))


def test_pickles_are_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"w": torch.zeros(2), "obj": object()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_torch(path)
