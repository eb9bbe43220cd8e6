"""Fault tests on a real standalone cluster (1 master, 2 workers of 1 core, separate JVMs on 127.0.0.1).

Each test runs a job of a driver program in a subprocess, injects a fault while the job runs, and checks
the complete, exact output: every row once, equal to the in-process result. The driver program (its JVM,
its application on the cluster) is started once and runs the tests' jobs one after the other, on the
executors left by the faults before: a start-up per test cost 20-30 s of CPU.
"""

import json
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


class Driver:
    """The driver program in ``serve`` mode (see ``_fault_job.py``): one job per request."""

    def __init__(self, cluster, workdir: Path) -> None:
        self.log = workdir / "driver.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(JOB), cluster.url, "serve"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def submit(self, tmp_path: Path, kind: str, fault: str = "none") -> tuple[Path, Path]:
        """Start a job; (its marker directory, its result file)."""
        markers, out = tmp_path / "markers", tmp_path / "result.npz"
        markers.mkdir()
        self.proc.stdin.write(json.dumps([kind, str(out), str(markers), fault]) + "\n")
        self.proc.stdin.flush()
        return markers, out

    def check_alive(self, out: Path) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the driver program ended: {self.log.read_text()[-3000:]}")
        if Path(f"{out}.done").exists():
            raise AssertionError(f"the job ended before the fault was injected: {Path(f'{out}.done').read_text()}")

    def wait(self, out: Path, timeout: float = 600) -> str:
        """How the job writing ``out`` ended: ``ok`` or its traceback."""
        done = Path(f"{out}.done")
        deadline = time.monotonic() + timeout
        while not done.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"the driver program ended: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the job did not finish")
            time.sleep(0.2)
        return done.read_text()

    def stop(self) -> None:
        self.proc.stdin.close()  # the program stops its session and ends
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def driver(cluster, tmp_path_factory):
    driver = Driver(cluster, tmp_path_factory.mktemp("driver"))
    try:
        yield driver
    finally:
        driver.stop()


def _wait_for_chunks(markers, n, driver, out, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([p for p in os.listdir(markers) if p.startswith("chunk-")]) >= n:
            return
        driver.check_alive(out)
        time.sleep(0.2)
    raise AssertionError("the job made no progress")


def _check_complete(driver, out):
    status = driver.wait(out)
    assert status == "ok", status[-5000:]
    result = np.load(out)
    ids, got, expected = result["ids"], result["got"], result["expected"]
    assert len(ids) == len(expected) and len(np.unique(ids)) == len(ids), "rows lost or duplicated"
    np.testing.assert_allclose(got[np.argsort(ids)], expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("kind", "fault"),
    [("rdd", "raise-once"), ("df", "crash-once"), ("knn-broadcast", "none"), ("knn-sharded", "none")],
)
def test_executor_killed_mid_job(cluster, driver, tmp_path, kind, fault):
    """kill -9 of an executor mid-job; the distribute() jobs also meet a chunk that fails once before it.

    ``raise-once``: the first chunk to run raises; ``crash-once``: it kills its Python worker (``os._exit``).
    """
    markers, out = driver.submit(tmp_path, kind, fault)
    _wait_for_chunks(markers, 10, driver, out)
    executors = cluster.executor_pids()
    assert executors, "no executor JVM found"
    os.kill(executors[0], signal.SIGKILL)
    _check_complete(driver, out)
    assert (markers / "fault-done").exists() == (fault != "none")


def test_worker_stopped_for_good_mid_job(cluster, driver, tmp_path):
    """The job finishes on the one worker left; a new worker then takes its place for the other tests."""
    markers, out = driver.submit(tmp_path, "rdd")
    try:
        _wait_for_chunks(markers, 10, driver, out)
        cluster.stop_worker(1)
        _check_complete(driver, out)
        assert cluster.alive_workers() == 1
    finally:
        cluster.restart_worker(1)


@pytest.mark.slow
def test_an_older_scikit_learn_on_the_executors_fails_the_job(cluster, tmp_path, old_sklearn_python):
    """Executors on an environment with an older scikit-learn: every entry point fails before unpickling.

    The executors' Python is the driver's ``PYSPARK_PYTHON`` (not the workers' own); see ``_versions_job.py``.
    """
    run_versions_job(old_sklearn_python, "classic", cluster.url, tmp_path)
