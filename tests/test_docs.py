"""The documentation builds with warnings as errors, and documents every command and public function."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("mkdocs", reason="install the test extra: pip install -e '.[test]'")


def test_docs_build_strict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    cli = (tmp_path / "cli" / "index.html").read_text()
    for text in ("sklspark knn", "sklspark apply", "sklspark demo", "--trust-pickle", "--spark-connect"):
        assert text in cli
    api = (tmp_path / "api" / "index.html").read_text() + (tmp_path / "neighbors" / "index.html").read_text()
    for name in ("distribute", "udf", "spark_session", "ChunkError", "kneighbors_join", "all_neighbors", "to_edges"):
        assert name in api
