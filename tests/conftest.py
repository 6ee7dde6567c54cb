import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "allow")

# A persistent XLA compilation cache for this test run (fresh each run, so nothing carries
# over between runs): fits compile the same programs again and again from fresh closures,
# and notebook kernels are separate processes. Measured: tests/test_inference.py alone,
# back to back, 378 s without it, 210 s with it. One directory per pytest-xdist worker,
# shared with the notebook kernels that worker starts (which run while it waits), so no two
# processes ever write the same entry. CDT_TEST_XLA_CACHE=0 compiles everything afresh.
XLA_CACHE = os.environ.get("CDT_TEST_XLA_CACHE", "1") != "0"
if "CDT_TEST_JAX_CACHE_ROOT" not in os.environ:
    os.environ["CDT_TEST_JAX_CACHE_ROOT"] = tempfile.mkdtemp(prefix="cdt_bayes_test_xla_cache_")
    _OWN_CACHE_ROOT = True
else:
    _OWN_CACHE_ROOT = False
JAX_CACHE_DIR = os.path.join(os.environ["CDT_TEST_JAX_CACHE_ROOT"], os.environ.get("PYTEST_XDIST_WORKER", "main"))
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
