"""Every example runs, at a tiny size, and reports a correct result.

The examples run in this process on the test session (``main(argv, spark=spark)``: an example leaves a
session it was given running), not each in a subprocess with a JVM of its own (about 25 s each). One runs
as a user runs it, ``python examples/<name>.py`` in its own process: the streaming one, whose query is
stopped and restarted mid-way (what once left a Python worker's trace on stderr).
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAME = r"equals? in-process scikit-learn[^:\n]*: True"
#: example -> (tiny arguments, what its output must show)
TINY = {
    "quickstart.py": (["--n-rows", "500"], SAME),
    "batch_scoring.py": (["--n-rows", "2000"], SAME),
    "pca_to_spark_ml.py": (["--n-rows", "2000"], SAME),
    "streaming_scoring.py": (["--n-files", "4", "--rows-per-file", "200"], SAME),
    "item_recommender.py": (["--n-items", "500"], SAME),
    "approximate_knn.py": (["--n-points", "2000"], r"recall@10 of annoy against exact search: (0\.9\d*|1\.0+)"),
    "tabular_pipeline.py": (["--n-rows", "2000"], SAME),
    "many_models.py": (["--n-rows", "2000", "--n-stores", "20"], SAME),
}
#: run as a program in a subprocess (its own JVM, on local[1]); every other example runs in-process
STANDALONE = "streaming_scoring.py"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{Path(name).stem}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(set(TINY) - {STANDALONE}))
def test_example_runs_on_the_test_session(spark, capsys, name):
    args, expected = TINY[name]
    # The example's own fits and checks run in this test process, beside the other test process and the
    # Spark workers on 2 cores: OpenMP threads spinning there made the pipeline example 65 s instead of 7 s.
    with threadpool_limits(1):
        _load(name).main(args, spark=spark)  # a wrong result raises SystemExit(1)
    out, err = capsys.readouterr()
    assert re.search(expected, out), out
    assert "Traceback" not in err, err[-4000:]
    assert not spark.sparkContext._jsc.sc().isStopped(), "the example stopped the session it was given"


def test_example_runs_as_a_program():
    args, expected = TINY[STANDALONE]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / STANDALONE), *args, "--master", "local[1]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert re.search(expected, proc.stdout), proc.stdout
    # a quiet run: no Python trace (e.g. a worker stopped mid-stream), no Spark log lines
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert not re.search(r" (WARN|INFO) ", proc.stderr), proc.stderr[-4000:]


def test_every_example_is_smoke_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY)
