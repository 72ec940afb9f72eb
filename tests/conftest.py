"""Shared fixtures. Everything runs on CPU in float32 unless a test says otherwise."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests run small programs once, so compiling dominates: LLVM's optimisation level 0 halves XLA:CPU
# compile time (a tiny PDT run: 28 s -> 15 s). It changes how fast programs run, not what they
# compute; benchmarks never set it. Subprocesses started by tests inherit it (they append their own).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# One persistent compilation cache for the session's workers and the subprocesses they start: the
# same tiny programs (runtime rounds, train steps) are compiled by several test files. Keys are the
# programs' HLO and flags, so a stale entry can never be used for a changed program.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"pdt-jax-xla-cache-{os.getuid()}")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # noqa: E402

# The longest test files start first, one per worker (pytest-xdist --dist loadfile hands out files
# in collection order): started last, either would run alone at the end of the suite.
_FIRST = ("tests/train/test_training.py", "tests/test_demo.py")


def pytest_collection_modifyitems(session, config, items):
    rank = lambda item: next((i for i, f in enumerate(_FIRST) if item.nodeid.startswith(f)), len(_FIRST))
    items.sort(key=rank)   # stable: the order within a file, and of the other files, is kept

jax.config.update("jax_default_matmul_precision", "highest")
