"""Execute every example notebook with tiny settings (CDT_NB_FAST=1), so they cannot rot.

The notebooks are committed without outputs; here each one runs top to bottom in a fresh
kernel of the current interpreter and any cell error fails the test. Notebook 04 uses
``../shared/data`` when present and must run cleanly (printing messages only) without it,
which ``test_real_ecg_notebook_without_data`` checks explicitly.
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import JAX_CACHE_DIR, XLA_CACHE

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
ALL = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
KERNEL = "cdt-bayes-nbtest"
CELL_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def kernel_env(tmp_path_factory):
    """A kernel spec for ``sys.executable`` in a temp Jupyter path, and the kernel's env."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "cdt_bayes notebook test",
                "language": "python",
            }
        )
    )
    env = {
        "CDT_NB_FAST": "1",
        "CDT_BAYES_NO_PROGRESS": "1",
        "MPLBACKEND": "Agg",
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
        # distance dictionaries shared by the notebooks of one session, not the user cache
        "CDT_BAYES_CACHE": str(tmp_path_factory.mktemp("dictionary_cache")),
        "CDT_NB_OUT": str(tmp_path_factory.mktemp("notebook_out")),
        **(  # the run's persistent compilation cache (tests/conftest.py)
            {
                "JAX_COMPILATION_CACHE_DIR": JAX_CACHE_DIR,
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            }
            if XLA_CACHE
            else {}
        ),
        # the source checkout first, whatever the editable install resolves to
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    return root, env


def run_notebook(name: str, kernel_env, monkeypatch, extra_env=None) -> float:
    """Execute ``notebooks/<name>`` in a fresh kernel; return the wall time in s."""
    root, env = kernel_env
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    for k, v in {**env, **(extra_env or {})}.items():
        monkeypatch.setenv(k, v)  # the kernel process inherits this environment
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{name} is committed with outputs; clear them"
    )
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - t0
    print(f"\n{name}: {seconds:.1f} s")
    return seconds


def test_notebooks_present():
    assert ALL == [
        "01_forward_quickstart.ipynb",
        "02_posterior_nonidentifiability.ipynb",
        "03_prior_sensitivity.ipynb",
        "04_real_ecg.ipynb",
    ]


# One class per heavy notebook: ``make test`` hands out whole modules and classes to its
# workers (``--dist loadscope``), so the two longest notebooks (~2-3 min each) run side by
# side instead of one after the other in a single worker.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_forward_quickstart.ipynb", "04_real_ecg.ipynb"])
def test_notebook_runs(name, kernel_env, monkeypatch, record_property):
    record_property("seconds", run_notebook(name, kernel_env, monkeypatch))


@pytest.mark.slow
class TestPosteriorNotebook:
    def test_notebook_runs(self, kernel_env, monkeypatch, record_property):
        name = "02_posterior_nonidentifiability.ipynb"
        record_property("seconds", run_notebook(name, kernel_env, monkeypatch))


@pytest.mark.slow
class TestSensitivityNotebook:
    def test_notebook_runs(self, kernel_env, monkeypatch, record_property):
        name = "03_prior_sensitivity.ipynb"
        record_property("seconds", run_notebook(name, kernel_env, monkeypatch))



@pytest.mark.slow
def test_real_ecg_notebook_without_data(kernel_env, monkeypatch, tmp_path):
    """With no shared data the real-ECG notebook runs through and only prints messages."""
    run_notebook(
        "04_real_ecg.ipynb", kernel_env, monkeypatch, {"CDT_SHARED_DATA": str(tmp_path / "absent")}
    )
