"""Every example runs, at a tiny size, as a user would run it, and reports a correct result."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOCAL = ["--master", "local[1]"]  # one Python worker each: the examples are tiny here
SAME = r"equals? in-process scikit-learn[^:\n]*: True"
#: example -> (tiny arguments, what its output must show)
TINY = {
    "quickstart.py": (["--n-rows", "500", *LOCAL], SAME),
    "batch_scoring.py": (["--n-rows", "2000", *LOCAL], SAME),
    "pca_to_spark_ml.py": (["--n-rows", "2000", *LOCAL], SAME),
    "streaming_scoring.py": (["--n-files", "4", "--rows-per-file", "200", *LOCAL], SAME),
    "item_recommender.py": (["--n-items", "500", *LOCAL], SAME),
    "approximate_knn.py": (["--n-points", "2000", *LOCAL], r"recall@10 of annoy against exact search: (0\.9\d*|1\.0+)"),
    "tabular_pipeline.py": (["--n-rows", "2000", *LOCAL], SAME),
    "many_models.py": (["--n-rows", "2000", "--n-stores", "20", *LOCAL], SAME),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_example_runs(name):
    args, expected = TINY[name]
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert re.search(expected, proc.stdout), proc.stdout
    # a quiet run: no Python trace (e.g. a worker stopped mid-stream), no Spark log lines
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert not re.search(r" (WARN|INFO) ", proc.stderr), proc.stderr[-4000:]


def test_every_example_is_smoke_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY)
