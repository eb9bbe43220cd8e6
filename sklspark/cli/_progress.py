"""Progress of the Spark jobs started inside a block: tasks done / total, rate and ETA.

On a terminal it is a live ``rich`` progress bar; otherwise (logs, CI) a plain line every few seconds.
It reads Spark's status tracker from a background thread, so it needs a classic session; under Spark
Connect (no status tracker on the client) it stays silent.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .._session import spark_context_of


class SparkProgress:
    """Context manager showing the progress of the Spark jobs started inside it.

    Parameters
    ----------
    spark : SparkSession
    description : str
        Label shown in front of the bar.
    console : rich.console.Console, optional
        Where to draw; defaults to standard error.
    plain_interval : float, default=5.0
        Seconds between plain progress lines when not on a terminal.

    Examples
    --------
    >>> with SparkProgress(spark, "counting"):
    ...     spark.range(1000).count()
    1000
    """

    def __init__(self, spark: Any, description: str, *, console: Console | None = None, plain_interval: float = 5.0):
        self._sc = spark_context_of(spark)
        self._description = description
        self._console = console or Console(stderr=True)
        self._plain_interval = plain_interval
        self._group = f"sklspark-{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SparkProgress:
        if self._sc is not None:
            self._sc.setJobGroup(self._group, self._description)
            self._thread = threading.Thread(target=self._watch, name="sklspark-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._thread is not None and self._sc is not None:
            self._thread.join()
            self._sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]  # None clears it

    def _counts(self) -> tuple[int, int]:
        assert self._sc is not None  # the watcher thread runs only with a SparkContext
        tracker = self._sc.statusTracker()
        done = total = 0
        for job_id in tracker.getJobIdsForGroup(self._group):
            job = tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job else ():
                stage = tracker.getStageInfo(stage_id)
                if stage is not None:
                    done += stage.numCompletedTasks
                    total += stage.numTasks
        return done, total

    def _watch(self) -> None:
        if self._console.is_terminal:
            self._watch_live()
        else:
            self._watch_plain()

    def _watch_live(self) -> None:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tasks"),
            TextColumn("[progress.data.speed]{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self._console, transient=True) as progress:
            bar = progress.add_task(self._description, total=None, rate="")
            start = time.monotonic()
            while not self._stop.wait(0.25):
                done, total = self._counts()
                rate = done / max(time.monotonic() - start, 1e-9)
                progress.update(bar, completed=done, total=total or None, rate=f"{rate:.1f} tasks/s")

    def _watch_plain(self) -> None:
        start = time.monotonic()
        last = None
        while not self._stop.wait(self._plain_interval):
            done, total = self._counts()
            if (done, total) == last or not total:
                continue
            last = (done, total)
            elapsed = time.monotonic() - start
            rate = done / elapsed
            eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
            self._console.print(
                f"[sklspark] {self._description}: {done}/{total} tasks ({100 * done / total:.0f}%), "
                f"{rate:.2f} tasks/s, elapsed {elapsed:.0f}s, ETA {eta}",
                highlight=False,
            )
