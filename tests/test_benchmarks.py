"""The benchmark script runs end to end at tiny sizes (timings are never asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.mark.slow  # every group at tiny sizes: about 100 s of the default suite's 10 minutes; run with -m slow
def test_benchmark_script_smoke(tmp_path):
    name = f"smoke-{tmp_path.name}"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--name", name], capture_output=True, text=True, timeout=900
    )
    results = SCRIPT.parent / "results"
    try:
        assert proc.returncode == 0, proc.stderr[-4000:]
        text = (results / f"{name}.md").read_text()
        for heading in (
            "## kNN all points",
            "## Cheap model, many rows: LogisticRegression.predict",
            "## Sparse kNN: TF-IDF vectors",
            "## Python worker peak memory",
            "## Approximate kNN all points",
            "## Targets",
        ):
            assert heading in text
        assert (results / f"{name}.png").stat().st_size > 10_000
    finally:
        for suffix in (".md", ".png"):
            (results / f"{name}{suffix}").unlink(missing_ok=True)


def _large_model_ok(text: str) -> bool:
    return len([line for line in text.splitlines() if line.startswith(("| broadcast", "| file"))]) == 2


def _pipeline_ok(text: str) -> bool:
    return "Throughput of distribute() / hand-written" in text and "equal in-process scikit-learn: True" in text


def _on_error_ok(text: str) -> bool:
    rows = [line for line in text.splitlines() if line.startswith(("| LogisticRegression", "| StandardScaler"))]
    return len(rows) == 2


def _approximate_sharded_ok(text: str) -> bool:
    return "hnsw, broadcast mode" in text and "hnsw, sharded mode" in text and "recall@10 >= 0.95 | " in text


def _shard_routing_ok(text: str) -> bool:
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("(100 rows) |")]
    return len(rows) == 3 and all("| yes (" in line for line in rows)


def _sharded_ok(text: str) -> bool:
    variants = ("broadcast", "sharded, layout chosen automatically", "sharded, shards by position (forced)")
    return all(text.count(f"| all_neighbors, {v} |") == 2 for v in variants) and "<= 1.2 | " in text


def _end_to_end_ok(text: str) -> bool:
    return "All neighbours end to end (3,000" in text and "| sklspark all_neighbors from ONE Parquet file" in text


@pytest.mark.parametrize(
    ("script", "args", "check"),
    [
        pytest.param(
            "large_model.py", ["--rows", "20000", "--queries", "500"], _large_model_ok, marks=pytest.mark.slow
        ),
        pytest.param("pipeline.py", ["--quick"], _pipeline_ok, marks=pytest.mark.slow),
        pytest.param("on_error.py", ["--quick"], _on_error_ok, marks=pytest.mark.slow),
        pytest.param("approximate_sharded.py", ["--quick"], _approximate_sharded_ok, marks=pytest.mark.slow),
        pytest.param("end_to_end.py", ["--quick"], _end_to_end_ok, marks=pytest.mark.slow),
        pytest.param("shard_routing.py", ["--quick"], _shard_routing_ok, marks=pytest.mark.slow),
        pytest.param("sharded.py", ["--quick"], _sharded_ok, marks=pytest.mark.slow),
    ],
)
def test_single_benchmark_script_smoke(tmp_path, script, args, check):
    name = f"smoke-{tmp_path.name}"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.with_name(script)), *args, "--name", name],
        capture_output=True,
        text=True,
        timeout=600,
    )
    result = SCRIPT.parent / "results" / f"{name}.md"
    try:
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert check(result.read_text())
    finally:
        result.unlink(missing_ok=True)
        result.with_suffix(".png").unlink(missing_ok=True)
