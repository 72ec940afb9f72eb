"""The frozen GPT-OSS trunk: config, parameters, KV cache, pure prefill/extend, and the Trunk API."""
from pdt_jax.trunk.api import GenerateOutput, Trunk, pad_batch
from pdt_jax.trunk.cache import KVCache, init_cache
from pdt_jax.trunk.config import ConfigError, TrunkConfig
from pdt_jax.trunk.hf_layout import CheckpointError

__all__ = ["Trunk", "TrunkConfig", "KVCache", "init_cache", "GenerateOutput", "pad_batch",
           "ConfigError", "CheckpointError"]
