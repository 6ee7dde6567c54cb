import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "allow")

# A persistent XLA compilation cache for this test run (fresh each run, so nothing carries
# over between runs): fits compile the same programs again and again from fresh closures,
# and notebook kernels are separate processes. Measured: tests/test_inference.py alone,
# back to back, 378 s without it, 210 s with it. One directory for the whole run, shared by
# every pytest-xdist worker and the notebook kernels they start: tests in different modules
# fit the same small cases, so a program one worker compiled is read by the other. Measured
# on the full suite (2 cores): 10 min 0 s (user 18:55) against 13 min 45 s (user 25:52) with
# one directory per worker (benchmarks/RESULTS.md, session 24). No file lock (JAX locks only
# when the cache has a size limit, and then scans the folder on every write: 16 min): a read
# that meets an entry another process is still writing fails to decompress, JAX warns
# ("Error reading persistent compilation cache entry", ignored in pyproject.toml) and compiles
# the program itself. CDT_TEST_XLA_CACHE=0 compiles everything afresh.
XLA_CACHE = os.environ.get("CDT_TEST_XLA_CACHE", "1") != "0"
if "CDT_TEST_JAX_CACHE_ROOT" not in os.environ:
    os.environ["CDT_TEST_JAX_CACHE_ROOT"] = tempfile.mkdtemp(prefix="cdt_bayes_test_xla_cache_")
    _OWN_CACHE_ROOT = True
else:
    _OWN_CACHE_ROOT = False
JAX_CACHE_DIR = os.environ["CDT_TEST_JAX_CACHE_ROOT"]
if XLA_CACHE:
    jax.config.update("jax_compilation_cache_dir", JAX_CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
if os.environ.get("JAX_ENABLE_X64"):
    jax.config.update("jax_enable_x64", True)


def pytest_unconfigure(config):
    """The controller (or a serial run) removes the cache root it created."""
    if _OWN_CACHE_ROOT and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.get("CDT_TEST_JAX_CACHE_ROOT", ""), ignore_errors=True)


SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def require(cond: bool, reason: str):
    """Skip when an optional dependency/data set is missing; fail under CDT_REQUIRE_ALL=1."""
    if not cond:
        if os.environ.get("CDT_REQUIRE_ALL") == "1":
            pytest.fail(f"required: {reason}")
        pytest.skip(reason)


@pytest.fixture
def key():
    return jax.random.key(0)
