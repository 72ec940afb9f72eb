"""The sharding rules: every array the library places has a rule for each of its logical axes on
the production meshes, and a rule that does not fit fails loudly, naming the array, its shape and
the rule (on abstract meshes: no devices needed)."""
import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from pdt_jax import config_files, sharding
from pdt_jax.bus import bus_axes, init_bus
from pdt_jax.runtime import program
from pdt_jax.sharding import MESH_AXES, ShardingError, ShardingRules
from pdt_jax.trunk.cache import cache_axes, init_cache


def mesh(**sizes):
    return AbstractMesh(tuple(sizes.get(a, 1) for a in MESH_AXES), MESH_AXES)


@pytest.mark.parametrize("variant,shape", [("", dict(expert=8)), ("", dict(fsdp=8)), ("", dict(expert=4, tensor=2)),
                                           ("small", dict(data=2, tensor=2, expert=2)), ("tiny", dict(data=8))])
def test_every_parameter_and_state_array_has_a_fitting_rule(variant, shape):
    """Trunk, sidecar, KV cache, bus and per-row state of each model config on its kind of mesh:
    every logical axis has a rule and every split dimension divides (rows: P = 8 prompts)."""
    cfg = config_files.pdt_config(config_files.load(f"configs/model/pdt.py:{variant}" if variant else "configs/model/pdt.py"))
    m = mesh(**shape)
    trunk, side = program.param_shardings(cfg, m, cfg.rules)
    split = [s for s in jax.tree.leaves(trunk) if s.spec != P(*[None] * len(s.spec))]
    model_parallel = any(shape.get(a, 1) > 1 for a in ("fsdp", "expert", "tensor"))
    assert bool(split) == model_parallel  # split wherever the mesh has a model axis; data parallel replicates
    P_, K = 8, cfg.K
    cache = jax.eval_shape(lambda: init_cache(cfg.trunk, P_ * K, 256, slack=9))
    cfg.rules.tree(cache, cache_axes(cache), m, prefix="kv_cache")
    bus = jax.eval_shape(lambda: init_bus(P_, K, cfg.sidecar.bus_capacity, cfg.sidecar.notes_dim, slack=3))
    specs = cfg.rules.tree(bus, bus_axes(bus), m, prefix="bus")
    if shape.get("data", 1) > 1:  # prompts over data, each prompt's streams together
        assert specs.notes.spec[:2] == ("data", None)


def test_a_dimension_the_mesh_does_not_divide_fails_naming_array_shape_and_rule():
    with pytest.raises(ShardingError) as e:
        ShardingRules().spec((12, 3, 64, 16), ("batch", "kv_heads", "kv_seq", "head_dim"), mesh(tensor=2),
                             "kv_cache/k/1")
    msg = str(e.value)
    assert "kv_cache/k/1 (12, 3, 64, 16)" in msg and "'kv_heads' of size 3" in msg and "kv_heads=('tensor',)" in msg


def test_an_unknown_logical_axis_fails_naming_it_and_the_array():
    with pytest.raises(ShardingError) as e:
        ShardingRules().spec((4, 8), ("embed", "layer_norm"), mesh(fsdp=2), "layers/0/scale")
    assert "layers/0/scale (4, 8)" in str(e.value) and "'layer_norm' has no sharding rule" in str(e.value)


def test_a_mesh_axis_used_twice_in_one_array_fails_even_where_its_size_is_one():
    rules = ShardingRules.from_mapping({"mlp": "fsdp"})
    with pytest.raises(ShardingError) as e:
        rules.spec((4, 8, 16), ("experts", "embed", "mlp"), mesh(), "layers/0/gate_up")
    assert "mesh axis 'fsdp' is used by logical axes 'embed' and 'mlp'" in str(e.value)


def test_rules_and_meshes_are_checked_when_they_are_made():
    with pytest.raises(ShardingError, match="unknown logical axis \\['vocabulary'\\]"):
        ShardingRules.from_mapping({"vocabulary": "tensor"})
    with pytest.raises(ShardingError, match="mesh axis 'model' unknown"):
        ShardingRules(heads="model")
    with pytest.raises(ShardingError, match="at most one axis may be -1"):
        sharding.mesh_shape({"data": -1, "expert": -1}, 8)
    with pytest.raises(ShardingError, match="needs 16 devices, found 8"):
        sharding.mesh_shape({"data": 2, "expert": 8}, 8)
    with pytest.raises(ShardingError, match="expected axis=size"):
        sharding.parse_mesh("data:2")
    assert sharding.mesh_shape({"expert": -1, "tensor": 2}, 8) == {"data": 1, "fsdp": 1, "expert": 4, "tensor": 2}
    assert ShardingRules.from_mapping({"vocab": "tensor,expert", "kv_seq": ""}).spec(
        (64, 8), ("vocab", "kv_seq"), mesh(expert=2, tensor=2)) == P(("tensor", "expert"), None)


def test_the_model_config_carries_mesh_and_rules_and_overrides_reach_them():
    cd = config_files.load("configs/model/pdt.py:tiny", ["--config.mesh.data=2", "--config.mesh.tensor=4",
                                                         "--config.sharding.vocab=tensor,expert"])
    cfg = config_files.pdt_config(cd)
    assert dict(cfg.mesh) == {"data": 2, "fsdp": 1, "expert": 1, "tensor": 4}
    assert cfg.rules.vocab == ("tensor", "expert") and cfg.rules.batch == ("data", "fsdp")
    with pytest.raises(Exception, match="vocabulary"):
        config_files.load("configs/model/pdt.py:tiny", ["--config.sharding.vocabulary=tensor"])


def test_training_xla_flags_add_what_the_user_did_not_set():
    """launch/train.py's XLA flags (pdt_jax/xla_flags.py): every training flag is added once; a
    flag the user set keeps the user's value."""
    from pdt_jax import xla_flags
    mine = "--xla_gpu_all_gather_combine_threshold_bytes=1048576 --xla_dump_to=/tmp/d"
    out = xla_flags.with_train_flags(mine).split()
    assert out[:2] == mine.split()
    assert sum(f.startswith("--xla_gpu_all_gather_combine_threshold_bytes=") for f in out) == 1
    assert set(xla_flags.TRAIN[1:]) <= set(out)
    assert xla_flags.with_train_flags(xla_flags.with_train_flags("")) == xla_flags.with_train_flags("")
