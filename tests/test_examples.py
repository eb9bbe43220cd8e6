"""Every example runs, at a tiny size, as a user would run it."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = {"quickstart.py": ["--n-rows", "500", "--master", "local[2]"]}


@pytest.mark.parametrize("name", sorted(TINY))
def test_example_runs(name):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *TINY[name]], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "equals in-process scikit-learn: True" in proc.stdout


def test_every_example_is_smoke_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY)
