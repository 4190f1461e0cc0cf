"""Sampling /proc: process trees and groups, CPU time of a server and the machine, workers' RSS."""

import os
import re
import resource
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

RSS_SAMPLE_SECONDS = 0.25

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat the benchmark reads."""

    pid: int
    state: str
    ppid: int
    pgid: int
    cpu_ticks: int


def _proc_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may itself hold spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(
        pid, fields[0], int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12])
    )


def _all_processes() -> list[ProcStat]:
    stats = (
        _proc_stat(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit()
    )
    return [stat for stat in stats if stat is not None and stat.state != "Z"]


def group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid`."""
    return [stat.pid for stat in _all_processes() if stat.pgid == pgid]


def process_tree(root: int) -> list[ProcStat]:
    """`root` and all its descendants, alive now."""
    processes = _all_processes()
    children: dict[int, list[ProcStat]] = {}
    for stat in processes:
        children.setdefault(stat.ppid, []).append(stat)
    tree = [stat for stat in processes if stat.pid == root]
    for stat in tree:
        tree.extend(children.get(stat.pid, []))
    return tree


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time used so far, in ticks: by each process of a server, by the whole machine."""

    at: float
    by_process: dict[int, int]
    children_seconds: float
    machine_busy: int
    machine_steal: int


@dataclass(frozen=True)
class CpuUsage:
    """CPU used between two snapshots: by the server, by wrk, by everything else."""

    server_seconds_by_process: dict[int, float]
    client_seconds: float
    other_percent: float
    steal_percent: float

    @property
    def server_seconds(self) -> float:
        """CPU seconds of the whole server process tree."""
        return sum(self.server_seconds_by_process.values())


def cpu_snapshot(root: int) -> CpuSnapshot:
    """User + system ticks of `root` and its descendants, of reaped children (wrk), of all CPUs."""
    with open("/proc/stat", encoding="ascii") as stat:
        # user nice system idle iowait irq softirq steal (guest time is already counted in user).
        ticks = [int(value) for value in stat.readline().split()[1:9]]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSnapshot(
        at=time.monotonic(),
        by_process={stat.pid: stat.cpu_ticks for stat in process_tree(root)},
        children_seconds=children.ru_utime + children.ru_stime,
        machine_busy=sum(ticks) - ticks[3] - ticks[4] - ticks[7],
        machine_steal=ticks[7],
    )


def cpu_usage(before: CpuSnapshot, after: CpuSnapshot) -> CpuUsage:
    """The CPU used between two snapshots, by the server, by wrk and by everything else."""
    elapsed = after.at - before.at
    server = {
        pid: (ticks - before.by_process.get(pid, 0)) / CLOCK_TICKS
        for pid, ticks in after.by_process.items()
    }
    client = after.children_seconds - before.children_seconds
    busy = (after.machine_busy - before.machine_busy) / CLOCK_TICKS
    # What neither the server nor wrk used: other processes on the machine (and this script).
    other = max(0.0, busy - sum(server.values()) - client)
    steal = (after.machine_steal - before.machine_steal) / CLOCK_TICKS
    return CpuUsage(server, client, other / elapsed * 100, steal / elapsed * 100)


def worker_pids(root: int) -> list[int]:
    """The processes that serve: the tree's leaves, less multiprocessing's resource tracker."""
    tree = process_tree(root)
    parents = {stat.ppid for stat in tree}
    return [
        stat.pid
        for stat in tree
        if stat.pid not in parents and b"multiprocessing.resource_tracker" not in _cmdline(stat.pid)
    ]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


class RssSampler:
    """Samples each worker's resident set size in a thread; keeps the maximum per worker."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.peaks: dict[int, float] = {}
        self._pids = list(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            for pid in self._pids:
                rss = _rss_mib(pid)
                if rss is not None:
                    self.peaks[pid] = max(rss, self.peaks.get(pid, 0.0))
            if self._stop.wait(RSS_SAMPLE_SECONDS):
                return
