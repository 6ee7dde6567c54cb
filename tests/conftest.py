import os

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "allow")
if os.environ.get("JAX_ENABLE_X64"):
    jax.config.update("jax_enable_x64", True)

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
