"""Config files (``path/to/file.py[:variant]``) loaded the one way entry points load them —
ml_collections ``config_flags`` — for code that is not an absl program (tests, benchmarks,
libraries), and turned into the frozen dataclasses the library runs on."""
from __future__ import annotations

import os
from typing import Sequence

from absl import flags
from ml_collections import ConfigDict, config_flags

from pdt_jax.trunk.config import ConfigError, TrunkConfig


def load(spec: str, overrides: Sequence[str] = (), name: str = "config") -> ConfigDict:
    """``configs/model/pdt.py:tiny`` → the ConfigDict of ``get_config('tiny')``, with
    ``overrides`` such as ``("--config.sidecar.lag=0",)`` applied as config_flags applies them."""
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found")
    bad = [o for o in overrides if not o.startswith(f"--{name}.")]
    if bad:
        raise ConfigError(f"config {spec}: {bad}: expected overrides of the form --{name}.FIELD=VALUE")
    argv = ["load", f"--{name}={spec}", *overrides]
    fv = flags.FlagValues()
    try:
        config_flags.DEFINE_config_file(name, None, flag_values=fv, sys_argv=argv, lock_config=True)
        fv(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"config {spec} {' '.join(overrides)}: {e}") from e
    return fv[name].value


def trunk_config(cd: ConfigDict) -> TrunkConfig:
    return TrunkConfig.from_mapping(cd)


def pdt_config(cd: ConfigDict):
    """A model ConfigDict (``trunk``, ``sidecar`` and optionally ``mesh``, ``sharding`` groups) →
    PDTConfig."""
    from pdt_jax.model import PDTConfig
    from pdt_jax.sharding import ShardingRules, check_mesh
    from pdt_jax.sidecar.config import SidecarConfig

    for group in ("trunk", "sidecar"):
        if group not in cd:
            raise ConfigError(f"model config: expected a '{group}' group, found groups {sorted(cd.keys())}")
    unknown = sorted(set(cd.keys()) - {"trunk", "sidecar", "mesh", "sharding"})
    if unknown:
        raise ConfigError(f"model config: unknown group(s) {unknown}; valid: trunk, sidecar, mesh, sharding")
    mesh = check_mesh(cd.mesh if "mesh" in cd else None)
    return PDTConfig(trunk_config(cd.trunk), SidecarConfig.from_mapping(cd.sidecar), mesh=tuple(mesh.items()),
                     rules=ShardingRules.from_mapping(cd.sharding if "sharding" in cd else None))
