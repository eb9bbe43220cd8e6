"""A real Spark standalone cluster on 127.0.0.1, started from the pip-installed pyspark, for fault tests.

One master and two workers with one core each, as separate JVM processes. Every process it starts is
stopped by PID (its whole process group) when the cluster is closed, also after a failing test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandaloneCluster:
    """Start with :meth:`start`, stop with :meth:`stop`; ``url`` is the master URL for drivers."""

    def __init__(self, workdir: Path, n_workers: int = 2, worker_memory: str = "2g") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n_workers = n_workers
        self.worker_memory = worker_memory
        self.port = _free_port()
        self.ui_port = _free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self._logs: list = []

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "SPARK_HOME": str(SPARK_HOME),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_WORKER_DIR": str(self.workdir / f"{name}-work"),
            "SPARK_LOCAL_DIRS": str(self.workdir / f"{name}-local"),
        }
        log = open(self.workdir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def start(self, timeout: float = 120.0) -> StandaloneCluster:
        self._spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui_port),
        )
        self.workers = [self._spawn_worker(i) for i in range(self.n_workers)]
        self.wait_for_workers(self.n_workers, timeout)
        return self

    def _spawn_worker(self, index: int) -> subprocess.Popen:
        return self._spawn(
            f"worker{index}",
            "org.apache.spark.deploy.worker.Worker",
            "--host",
            "127.0.0.1",
            "--cores",
            "1",
            "--memory",
            self.worker_memory,
            "--webui-port",
            str(_free_port()),
            self.url,
        )

    def wait_for_workers(self, n: int, timeout: float = 120.0) -> None:
        """Wait until ``n`` workers are registered with the master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.alive_workers() == n:
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{n} workers did not register with {self.url} in {timeout:.0f}s")

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as response:
                return int(json.load(response).get("aliveworkers", 0))
        except OSError:
            return 0

    def executor_pids(self) -> list[int]:
        """PIDs of this cluster's executor JVMs (they run inside the workers' work directories)."""
        out = subprocess.run(["pgrep", "-f", "CoarseGrainedExecutorBackend"], capture_output=True, text=True).stdout
        pids = []
        for pid in map(int, out.split()):
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if cwd.startswith(str(self.workdir)):
                pids.append(pid)
        return pids

    def stop_worker(self, index: int) -> None:
        """Stop worker ``index`` for good (its executors go with it)."""
        proc = self.workers[index]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def restart_worker(self, index: int) -> None:
        """Start a new worker in place of the stopped worker ``index`` and wait until all are registered."""
        self.workers[index] = self._spawn_worker(index)
        self.wait_for_workers(self.n_workers)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for pid in self.executor_pids():  # executors are children of the workers' sessions; be sure
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for log in self._logs:
            log.close()
