"""Few-row float32 matmuls and dense MoE experts for decode on XLA:CPU, as XLA FFI custom calls.

XLA:CPU runs a one-row matmul as a fast matrix-vector product but hands 2–4 rows to GEMM libraries
whose packing and per-call costs make three decode rows cost about twice one, although the weights
(the memory traffic) are read once either way. ``cpu_kernels.cc`` streams each weight row once for
all rows; with it, decoding three streams costs little more than one (bench/trunk_decode.py).

The C++ source is compiled on first use with the host's C++ compiler (``$CXX``, default ``g++``;
``-O3 -march=native``) into ``$PDT_JAX_KERNEL_CACHE`` (default ``~/.cache/pdt_jax/kernels``),
keyed by the source, flags, jaxlib version and CPU, written atomically. Without a compiler, or with
``PDT_JAX_CPU_KERNELS=0``, everything runs on XLA's own ops (one warning says why). The kernels are
forward only: gradients go through the XLA reference (``jax.custom_vjp``), so training is unchanged.
They are used only where they apply: the CPU backend, a single device, float32 and 1–4 rows.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

MAX_ROWS = 4
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
_state: dict = {}
_lock = threading.Lock()
_local = threading.local()


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled or loaded (the message says which step and why)."""


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _library_path(compiler: str) -> str:
    with open(_SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(b"\0".join([source, " ".join((compiler,) + _FLAGS).encode(), jax.__version__.encode(),
                                     platform.machine().encode(), _cpu_signature().encode()])).hexdigest()[:16]
    cache = os.environ.get("PDT_JAX_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pdt_jax", "kernels")
    return os.path.join(cache, f"cpu_kernels-{key}.so")


def build(compiler: str | None = None) -> str:
    """Compiles the kernels (once per source/compiler/CPU; later calls find the cached library) and
    returns the library's path. Raises KernelBuildError naming the compiler and its error."""
    compiler = compiler or os.environ.get("CXX") or "g++"
    path = _library_path(compiler)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    cmd = [compiler, *_FLAGS, "-I", jax.ffi.include_dir(), _SOURCE, "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        os.unlink(tmp)
        raise KernelBuildError(f"compiling {os.path.basename(_SOURCE)} with {compiler!r} failed: {e}") from None
    if done.returncode != 0:
        os.unlink(tmp)
        raise KernelBuildError(f"compiling {os.path.basename(_SOURCE)} with {compiler!r} failed "
                               f"(exit {done.returncode}):\n{done.stderr[-2000:]}")
    os.replace(tmp, path)  # atomic: a concurrent build or a kill never leaves a half-written library
    return path


def available() -> bool:
    """Whether the kernels are built and registered with XLA (building them on the first call)."""
    with _lock:
        if "ok" not in _state:
            _state["ok"] = False
            if os.environ.get("PDT_JAX_CPU_KERNELS", "1") == "0":
                log.info("PDT_JAX_CPU_KERNELS=0: few-row CPU decode runs on XLA's own ops")
            else:
                try:
                    lib = ctypes.cdll.LoadLibrary(build())
                    for name, symbol in (("pdt_cpu_matmul", lib.PdtCpuMatmul), ("pdt_cpu_moe_experts", lib.PdtCpuMoeExperts)):
                        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
                    _state["ok"] = True
                except (KernelBuildError, OSError, AttributeError) as e:
                    log.warning("CPU decode kernels unavailable, using XLA's ops instead: %s", e)
        return _state["ok"]


@contextlib.contextmanager
def disabled():
    """Within this block (on this thread), tracing uses XLA's ops only — e.g. to compile a
    comparison program. Programs already compiled keep what they were traced with."""
    previous = getattr(_local, "off", False)
    _local.off = True
    try:
        yield
    finally:
        _local.off = previous


def applies(rows: int, dtype) -> bool:
    """Decided while tracing: the kernels serve float32 with 1..MAX_ROWS rows on one CPU device."""
    return (1 <= rows <= MAX_ROWS and jnp.dtype(dtype) == jnp.float32 and not getattr(_local, "off", False)
            and jax.default_backend() == "cpu" and jax.device_count() == 1 and available())


def _require():
    if not available():
        raise KernelBuildError("the CPU decode kernels are not available (see the warning logged when loading "
                               "them); callers check pdt_jax.kernels.cpu.applies() first")


# ---- matmul: x [..., K] @ w [K, ...] ------------------------------------------------------------

@jax.custom_vjp
def _matmul2d(x_MxK, w_KxN):
    M, N = x_MxK.shape[0], w_KxN.shape[1]
    call = jax.ffi.ffi_call("pdt_cpu_matmul", jax.ShapeDtypeStruct((1, M, N), jnp.float32), vmap_method="sequential")
    return call(x_MxK[None], w_KxN[None])[0]


def _matmul2d_fwd(x, w):
    return _matmul2d(x, w), (x, w)


def _matmul2d_bwd(res, g):
    x, w = res
    return g @ w.T, x.T @ g


_matmul2d.defvjp(_matmul2d_fwd, _matmul2d_bwd)


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., K] @ w [K, *out] -> [..., *out] float32; the caller checks ``applies`` first."""
    _require()
    K = x.shape[-1]
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    out = _matmul2d(x.reshape(rows, K), w.reshape(K, -1))
    return out.reshape(x.shape[:-1] + w.shape[1:])


# ---- dense MoE experts ---------------------------------------------------------------------------

def experts(x_NxD, gate_up, gate_up_bias, down, down_bias, limit: float, alpha: float, reference):
    """Every expert on every token, [E, N, D], as one custom call: ``reference`` (the same five
    arrays -> [E, N, D], in XLA ops: ``trunk.moe.all_experts``) defines it and its gradient."""
    _require()
    limit, alpha = float(limit), float(alpha)

    @jax.custom_vjp
    def run(x, gu, gub, dn, dnb):
        E, N, D = gu.shape[0], x.shape[0], x.shape[1]
        call = jax.ffi.ffi_call("pdt_cpu_moe_experts", jax.ShapeDtypeStruct((E, N, D), jnp.float32),
                                vmap_method="sequential")
        return call(x, gu, gub, dn, dnb, limit=np.float32(limit), alpha=np.float32(alpha))

    def fwd(*args):
        return run(*args), args

    def bwd(args, g):
        _, pullback = jax.vjp(reference, *args)
        return pullback(g)

    run.defvjp(fwd, bwd)
    return run(x_NxD, gate_up, gate_up_bias, down, down_bias)
