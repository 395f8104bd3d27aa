"""Wall time, CPU time and memory of a job and the processes it starts, read from ``/proc``.

An adapter: it reads the kernel's process table (Linux), imports no Spark. Where ``/proc`` cannot
be read, the figures are 0 (or None) rather than an error.

- ``Progress``: one line per stage with its wall time and the CPU time of a process tree.
- ``process_tree_cpu``: CPU seconds of this process, a given process and its descendants.
- ``MemoryWatch``: peak RSS of a driver JVM and its Python workers, sampled in a thread.
- ``MemoryPeaks``: peak RSS of a child process tree split into driver, JVM and Python workers.
- ``status_kib``, ``children``, ``descendants``, ``cmdline``: the ``/proc`` reads underneath.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class Progress:
    """Prints one line per stage with its wall time (and the CPU time the driver JVM, its
    Python workers and this process used, when known); keeps both for the manifest.

    CPU seconds do not depend on what else runs on the machine: on an idle box with N cores
    a stage takes about ``max(cpu / N, ...)`` of wall time.
    """

    def __init__(
        self, out: Callable[[str], None] | None = None, cpu: Callable[[], float] | None = None
    ) -> None:
        self.out = out or (lambda line: print(line, flush=True))
        self.cpu = cpu
        self.timings: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.out(f"[{name}] {what} ...")
        started = time.perf_counter()
        cpu_started = self.cpu() if self.cpu else 0.0
        yield
        elapsed = time.perf_counter() - started
        self.timings[name] = round(elapsed, 1)
        used = ""
        if self.cpu:
            self.cpu_seconds[name] = round(self.cpu() - cpu_started, 1)
            used = f" (cpu {self.cpu_seconds[name]:.1f} s)"
        self.out(f"[{name}] done in {elapsed:.1f} s{used}")

    def note(self, line: str) -> None:
        self.out(f"    {line}")

    @property
    def total(self) -> float:
        return time.perf_counter() - self._started


# -- /proc reads ---------------------------------------------------------------------------------


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field (``VmRSS``, ``VmHWM``, ...) of ``/proc/<pid>/status``; 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children() -> dict[int, list[int]]:
    """Parent pid -> the pids of its living children, for every process ``/proc`` lists."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(parent, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """The living descendants of ``pid``, never this process nor what lies below it (under
    spark-submit this driver is the JVM's child)."""
    tree = children()
    found, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child == os.getpid():
                continue
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces; "" when unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_tree_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of this process, of ``pid`` and of all its descendants,
    living or reaped (``/proc``; 0 for the part that cannot be read)."""
    own = os.times()
    total = own.user + own.system + own.children_user + own.children_system
    return total + (tree_cpu(pid) if pid is not None else 0.0)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and of all its descendants, living or reaped
    (``/proc``; 0 for the part that cannot be read)."""
    return sum(process_cpu(member) for member in [pid, *descendants(pid)])


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and of its children it reaped; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    except (OSError, IndexError, ValueError):
        return 0.0
    return ticks / os.sysconf("SC_CLK_TCK")


# -- memory samplers -----------------------------------------------------------------------------


class MemoryWatch:
    """Peak RSS of the driver (JVM and Python) and of Spark's Python workers (local mode).

    Workers are found as descendants of the driver JVM and sampled every ``interval`` s;
    the JVM's own peak is its kernel high-water mark (``VmHWM``).
    """

    def __init__(self, jvm_pid: int | None, interval: float = 1.0) -> None:
        self.jvm_pid = jvm_pid
        self.interval = interval
        self.worker_peak_kib = 0
        self.workers_total_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)

    def __enter__(self) -> MemoryWatch:
        if self.jvm_pid is not None and Path("/proc").is_dir():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        assert self.jvm_pid is not None
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        if self.jvm_pid is None:
            return
        total = 0
        for pid in descendants(self.jvm_pid):
            self.worker_peak_kib = max(self.worker_peak_kib, status_kib(pid, "VmHWM"))
            total += status_kib(pid, "VmRSS")
        self.workers_total_peak_kib = max(self.workers_total_peak_kib, total)

    def report(self) -> dict[str, float | None]:
        self.sample()
        mib = 1024.0
        return {
            "driver_jvm_peak_mib": (
                round(status_kib(self.jvm_pid, "VmHWM") / mib, 1) if self.jvm_pid else None
            ),
            "driver_python_peak_mib": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib, 1
            ),
            "python_worker_peak_mib": round(self.worker_peak_kib / mib, 1),
            "python_workers_total_peak_mib": round(self.workers_total_peak_kib / mib, 1),
        }


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB; 0 when unreadable."""
    return status_kib(pid, "VmRSS") / 1024


@dataclass
class MemoryPeaks:
    """Peak RSS (MiB) of a child job's process tree: the driver (Python), its JVMs, and Spark's
    Python workers (the largest one and all together); ``sample(driver)`` adds one sample."""

    driver_python: float = 0.0
    jvm: float = 0.0
    worker_max: float = 0.0
    workers_total: float = 0.0
    samples: int = 0

    def sample(self, driver: int) -> None:
        commands = {p: cmdline(p) for p in descendants(driver)}
        jvm = [p for p, c in commands.items() if c.split(" ")[0].endswith("java")]
        workers = [
            p
            for p, c in commands.items()
            if p not in jvm and ("pyspark.daemon" in c or "pyspark.worker" in c)
        ]
        worker_rss = [rss_mib(p) for p in workers]
        self.driver_python = max(self.driver_python, rss_mib(driver))
        self.jvm = max(self.jvm, sum(rss_mib(p) for p in jvm))
        self.worker_max = max([self.worker_max, *worker_rss])
        self.workers_total = max(self.workers_total, sum(worker_rss))
        self.samples += 1
