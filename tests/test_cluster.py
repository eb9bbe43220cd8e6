"""Fault tests on a real standalone cluster (1 master, 2 workers of 1 core, separate JVMs on 127.0.0.1).

Each test runs a driver program in a subprocess, injects a fault while the job runs, and checks the
complete, exact output: every row once, equal to the in-process result.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _cluster import StandaloneCluster
from _venvs import run_versions_job

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("cluster")]

JOB = Path(__file__).with_name("_fault_job.py")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = StandaloneCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _start_job(cluster, tmp_path, kind, fault="none"):
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "result.npz"
    proc = subprocess.Popen(
        [sys.executable, str(JOB), cluster.url, kind, str(out), str(markers), fault],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, markers, out


def _wait_for_chunks(markers, n, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([p for p in os.listdir(markers) if p.startswith("chunk-")]) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before the fault was injected: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("the job made no progress")


def _check_complete(proc, out):
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-5000:]
    result = np.load(out)
    ids, got, expected = result["ids"], result["got"], result["expected"]
    assert len(ids) == len(expected) and len(np.unique(ids)) == len(ids), "rows lost or duplicated"
    np.testing.assert_allclose(got[np.argsort(ids)], expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("kind", "fault"),
    [("rdd", "raise-once"), ("df", "crash-once"), ("knn-broadcast", "none"), ("knn-sharded", "none")],
)
def test_executor_killed_mid_job(cluster, tmp_path, kind, fault):
    """kill -9 of an executor mid-job; the distribute() jobs also meet a chunk that fails once before it.

    ``raise-once``: the first chunk to run raises; ``crash-once``: it kills its Python worker (``os._exit``).
    """
    proc, markers, out = _start_job(cluster, tmp_path, kind, fault)
    _wait_for_chunks(markers, 10, proc)
    executors = cluster.executor_pids()
    assert executors, "no executor JVM found"
    os.kill(executors[0], signal.SIGKILL)
    _check_complete(proc, out)
    assert (markers / "fault-done").exists() == (fault != "none")


def test_worker_stopped_for_good_mid_job(cluster, tmp_path):
    """The job finishes on the one worker left; a new worker then takes its place for the other tests."""
    proc, markers, out = _start_job(cluster, tmp_path, "rdd")
    try:
        _wait_for_chunks(markers, 10, proc)
        cluster.stop_worker(1)
        _check_complete(proc, out)
        assert cluster.alive_workers() == 1
    finally:
        cluster.restart_worker(1)


@pytest.mark.slow
def test_an_older_scikit_learn_on_the_executors_fails_the_job(cluster, tmp_path, old_sklearn_python):
    """Executors on an environment with an older scikit-learn: every entry point fails before unpickling.

    The executors' Python is the driver's ``PYSPARK_PYTHON`` (not the workers' own); see ``_versions_job.py``.
    """
    run_versions_job(old_sklearn_python, "classic", cluster.url, tmp_path)
