"""Loading ml_collections config files (``path/to/file.py[:variant]``) outside absl launchers, and
turning them into the frozen dataclasses the library runs on."""
from __future__ import annotations

import importlib.util
import os

from ml_collections import ConfigDict

from pdt_jax.trunk.config import ConfigError, TrunkConfig


def load(spec: str) -> ConfigDict:
    """``configs/model/pdt.py:tiny`` → the ConfigDict returned by ``get_config('tiny')``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found")
    mod_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: expected a get_config(arg) function")
    return module.get_config(arg or None)


def trunk_config(cd: ConfigDict) -> TrunkConfig:
    return TrunkConfig.from_mapping(cd)


def pdt_config(cd: ConfigDict):
    """A ConfigDict with ``trunk`` and ``sidecar`` groups → PDTConfig."""
    from pdt_jax.model import PDTConfig
    from pdt_jax.sidecar.config import SidecarConfig

    for group in ("trunk", "sidecar"):
        if group not in cd:
            raise ConfigError(f"model config: expected a '{group}' group, found groups {sorted(cd.keys())}")
    return PDTConfig(trunk_config(cd.trunk), SidecarConfig.from_mapping(cd.sidecar))
