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

# Longest file first (pytest-xdist --dist loadfile hands out files in collection order, each to the
# next free worker): started late, a long file runs alone at the end of the suite. Seconds per file
# measured on EPYC-5 (2 workers, 2026-11-30); files not listed follow, in collection order.
_SECONDS = {
    "tests/train/test_training.py": 314, "tests/test_demo.py": 195, "tests/runtime/test_runtime.py": 128,
    "tests/runtime/test_cli.py": 103, "tests/test_pdt_model.py": 91, "tests/multidevice/test_runtime_sharding.py": 61,
    "tests/trunk/test_decode.py": 36, "tests/test_bus.py": 43, "tests/trunk/test_moe.py": 27,
    "tests/train/test_forward.py": 85, "tests/data_pipeline/test_openai_teacher.py": 18,
    "tests/data_pipeline/test_teacher_notes.py": 16, "tests/test_tokenizer.py": 12,
    "tests/multidevice/test_moe_sharding.py": 12, "tests/converters/test_bad_input.py": 11,
    "tests/multidevice/test_trunk_sharding.py": 11, "tests/data_pipeline/test_resume.py": 10,
    "tests/train/test_losses.py": 9,
}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: -_SECONDS.get(item.nodeid.split("::")[0], 0))   # stable within a file

jax.config.update("jax_default_matmul_precision", "highest")
