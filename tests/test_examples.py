"""Every example runs, at a tiny size, as a user would run it, and says its result equals scikit-learn's."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOCAL = ["--master", "local[2]"]
TINY = {
    "quickstart.py": ["--n-rows", "500", *LOCAL],
    "batch_scoring.py": ["--n-rows", "2000", *LOCAL],
    "pca_to_spark_ml.py": ["--n-rows", "2000", *LOCAL],
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_example_runs(name):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *TINY[name]], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert re.search(r"equals in-process scikit-learn[^:\n]*: True", proc.stdout), proc.stdout


def test_every_example_is_smoke_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY)
