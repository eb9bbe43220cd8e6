"""A second Python environment for the executors: one package at another version, everything else as here.

The environment is a real virtual environment (``python -m venv``) with the requirement installed into it
by pip. Its ``site-packages`` then adds this test run's ``site-packages`` *after* its own (a ``.pth``
file calling ``site.addsitedir``, so sklspark's editable install is found too): the requirement shadows
this run's version, and pyspark, numpy, pandas... are the same files. With pip's cache warm it takes a
few seconds to build, and it is built once per test run and driver environment (a file lock serialises
the xdist workers).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

#: The executors' scikit-learn in the tests of the version check: older than the driver's.
WORKER_SKLEARN = "1.6.1"

#: The driver program of those tests.
VERSIONS_JOB = Path(__file__).with_name("_versions_job.py")


def worker_python(root: Path, requirement: str) -> Path:
    """The interpreter of an environment under ``root`` where ``requirement`` (``"pkg==x.y.z"``) is installed.

    Built on first use; the directory name depends on the requirement and on this run's environment.
    """
    here = sysconfig.get_paths()["purelib"]
    key = hashlib.sha1(f"{here}|{requirement}".encode()).hexdigest()[:12]
    env = root / f"worker-env-{key}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"worker-env-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        python = env / "bin" / "python"
        if not (env / "ready").exists():
            _run(sys.executable, "-m", "venv", "--without-pip", "--clear", str(env))
            site = _run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
            _run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, requirement)
            Path(site, "zz_test_run_env.pth").write_text(f"import site; site.addsitedir({here!r})\n")
            (env / "ready").touch()
    return python


def run_versions_job(python: Path, mode: str, master: str, work_dir: Path) -> None:
    """Run ``_versions_job.py`` with its executors on ``python`` and check that it passed (see its docstring).

    ``SKLSPARK_SKIP_VERSION_CHECK`` is removed from its environment: the job sets it itself when it means to.
    """
    env = {key: value for key, value in os.environ.items() if key != "SKLSPARK_SKIP_VERSION_CHECK"}
    proc = subprocess.run(
        [sys.executable, str(VERSIONS_JOB), mode, master, WORKER_SKLEARN, str(work_dir)],
        env={**env, "PYSPARK_PYTHON": str(python)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "VERSIONS OK" in proc.stdout


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout
