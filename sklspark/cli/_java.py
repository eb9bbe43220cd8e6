"""Checking for a usable Java before Spark is touched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

MIN_JAVA = 17


class JavaMissing(RuntimeError):
    """No Java, or one older than Spark 4 needs."""


def java_major_version() -> int:
    """The major version of the ``java`` Spark will use (``$JAVA_HOME/bin/java``, else ``java`` on PATH).

    Raises
    ------
    JavaMissing
        If no Java is found or its version cannot be read or is older than 17.
    """
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    how_to = (
        f"Spark 4 needs Java {MIN_JAVA} or newer. Install one (e.g. `apt-get install openjdk-17-jre-headless`, "
        f"`brew install openjdk@17`, or https://adoptium.net) and put it on PATH or set JAVA_HOME."
    )
    if not java or not os.path.exists(java):
        where = f"JAVA_HOME={home} has no bin/java" if home else "no `java` on PATH and JAVA_HOME is not set"
        raise JavaMissing(f"Java not found ({where}). {how_to}")
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaMissing(f"could not run {java} -version: {exc}. {how_to}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        raise JavaMissing(f"could not read the version of {java}. {how_to}")
    major = int(match.group(2)) if match.group(1) == "1" else int(match.group(1))
    if major < MIN_JAVA:
        raise JavaMissing(f"{java} is Java {major}. {how_to}")
    return major
