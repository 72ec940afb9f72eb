"""A tiny PDT whose sidecar acts (shared by the runtime and training tests): SNC output and
adapter up-projections drawn at scale 0.5 and both gates at sigmoid(2), so notes and adapters
change the logits (a fresh sidecar's zero-initialised outputs would hide every effect)."""
import jax
import jax.numpy as jnp

from pdt_jax import config_files
from pdt_jax import model as pdt
from pdt_jax.sidecar.params import acting
from pdt_jax.tokenizer import Tokenizer
from pdt_jax.trunk.params import init_trunk


def acting_sidecar(cfg, key, draws_key) -> dict:
    return acting(pdt.init_sidecar(cfg, key), draws_key)


def tiny_model():
    """(cfg, trunk params, acting sidecar params, tokenizer) at configs/model/pdt.py:tiny."""
    cfg = config_files.pdt_config(config_files.load("configs/model/pdt.py:tiny"))
    return cfg, init_trunk(cfg.trunk, jax.random.key(0), 0.1), acting_sidecar(cfg, jax.random.key(1), jax.random.key(2)), Tokenizer.tiny()


def with_readiness_bias(side, b: float) -> dict:
    """The agreement head's output bias set to b: +50 commits every block, −50 fails every block."""
    return dict(side, agree=dict(side["agree"], b2=jnp.float32(b)))


class Spy:
    """Wraps a DeviceEngine and keeps every round's result (to inspect rolled-back attempts)."""

    def __init__(self, engine):
        self.engine, self.rounds = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def submit(self, *a):
        fetch = self.engine.submit(*a)

        def spied():
            out = fetch()
            self.rounds.append(out)
            return out
        return spied
