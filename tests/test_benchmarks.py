"""The large-case benchmark script runs end to end (tiny settings: it is timed elsewhere)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_large_benchmark_runs_and_reports(tmp_path):
    import large

    out = tmp_path / "RESULTS.md"
    argv = ["--levels", "1", "--n-pmj", "3", "--methods", "map,nuts", "--chains", "1", "--warmup", "30",
            "--samples", "30", "--n-starts", "2", "--map-steps", "100", "--search-rounds", "0",
            "--inference-mesh", "6", "--nuts-budget", "600", "--no-cache", "--out", str(out)]
    assert large.main(argv) == 0
    text = out.read_text()
    assert "## Large-case benchmark" in text
    assert "refined 1x (32838 nodes, 148024 tets)" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| map |") or ln.startswith("| nuts |")]
    assert len(rows) == 2
    cells = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[1:-1]] for r in rows}
    head = [c.strip() for c in text.splitlines()[[i for i, ln in enumerate(text.splitlines())
                                                  if ln.startswith("| method |")][0]].split("|")[1:-1]]
    nuts = dict(zip(head, cells["nuts"]))
    assert nuts["draws"] == "1x30"  # the budget did not stop it: nothing extrapolated
    assert nuts["extrapolated_s"] == ""
    assert "search" in nuts["stages_s"] and "laplace" in nuts["stages_s"] and "sampling" in nuts["stages_s"]
    # 60 iterations in chunks of 25: the rate comes from the chunks after the compiling one
    assert float(nuts["s_per_iteration"]) > 0 and float(nuts["mean_tree_steps"]) >= 1
    for row in cells.values():  # an activation map on the refined mesh's nodes, in ms (tiny fits: not accurate)
        assert np.isfinite(float(dict(zip(head, row))["rmse_ms"]))
