"""The trainable PDT sidecar: stream adapters, SNC, planner and the notes / speculation / coverage /
agreement / stream heads, attached to the frozen trunk through its hook points."""
from pdt_jax.sidecar.config import SidecarConfig
from pdt_jax.sidecar.hooks import HookContext, SidecarHooks
from pdt_jax.sidecar.params import sidecar_specs

__all__ = ["SidecarConfig", "SidecarHooks", "HookContext", "sidecar_specs"]
