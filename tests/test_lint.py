"""The code base is lint-clean under the project's ruff settings (``make lint``)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "cdt_bayes", "tests", "benchmarks", "docs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
