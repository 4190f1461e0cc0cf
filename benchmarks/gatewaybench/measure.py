"""Measuring: warm every server, then drive each cell with wrk in rounds while sampling /proc."""

from collections.abc import Sequence
from pathlib import Path

from benchmarks.gatewaybench.figures import Result, Round, merge_rounds
from benchmarks.gatewaybench.plan import Cell, cells
from benchmarks.gatewaybench.procfs import RssSampler, cpu_snapshot, cpu_usage, worker_pids
from benchmarks.gatewaybench.servers import RunningServer
from benchmarks.gatewaybench.wrk import parse_wrk, run_wrk, wrk_script

WARMUP_SECONDS = 2
# Before each later round of a cell: wrk's new connections, nothing left to warm up.
REWARM_SECONDS = 1
# Before the first round, every server serves each payload on this many connections, enough
# for the kernel to hand some to every worker.
WARM_UP_CONNECTIONS = 16


def warm_up(
    wrk: str, servers: Sequence[RunningServer], bodies: dict[int, bytes], directory: Path
) -> None:
    """Serve every payload on every worker of every server before anything is measured.

    A cell's own warm-up cannot do that at one connection: its connection reaches one worker,
    and the measured run's new connection may reach another one, still cold.
    """
    for server in servers:
        for rows, body in bodies.items():
            sticky = server.spec.split
            script = directory / f"warm-{'sticky' if sticky else 'plain'}-{rows}.lua"
            script.write_text(wrk_script(body, sticky_ids=sticky), encoding="utf-8")
            run_wrk(wrk, server.url, script, WARM_UP_CONNECTIONS, WARMUP_SECONDS)
        server.check_alive()
    print(f"warmed every worker of {len(servers)} servers", flush=True)


def measure(
    wrk: str,
    server: RunningServer,
    cell: Cell,
    body: bytes,
    directory: Path,
    duration: int,
    warmup: int = WARMUP_SECONDS,
) -> Result:
    """Warm up, then drive the server for `duration` seconds, sampling its CPU and memory."""
    script = directory / f"wrk-{'sticky' if cell.sticky_ids else 'plain'}-{cell.rows}.lua"
    script.write_text(wrk_script(body, sticky_ids=cell.sticky_ids), encoding="utf-8")
    run_wrk(wrk, server.url, script, cell.connections, warmup)
    server.check_alive()
    workers = worker_pids(server.pid)
    before = cpu_snapshot(server.pid)
    with RssSampler(workers) as sampler:
        output = run_wrk(wrk, server.url, script, cell.connections, duration)
    cpu = cpu_usage(before, cpu_snapshot(server.pid))
    server.check_alive()
    figures = parse_wrk(output)
    peak = max(sampler.peaks.values()) if sampler.peaks else None
    return Result(
        server=server.spec.label,
        workers=server.spec.workers,
        connections=cell.connections,
        rows=cell.rows,
        features=cell.label,
        requests=figures.requests,
        requests_per_second=figures.requests_per_second,
        p50_ms=figures.p50_ms,
        p99_ms=figures.p99_ms,
        errors=figures.errors,
        cpu_ms_per_request=(
            cpu.server_seconds * 1000 / figures.requests if figures.requests else None
        ),
        rss_mib_per_worker=peak,
        client_cpu_seconds=round(cpu.client_seconds, 2),
        other_cpu_percent=round(cpu.other_percent, 1),
        steal_percent=round(cpu.steal_percent, 1),
        cpu_seconds_by_process={
            str(pid): round(seconds, 2) for pid, seconds in cpu.server_seconds_by_process.items()
        },
        rss_mib_by_worker={str(pid): round(rss, 1) for pid, rss in sampler.peaks.items()},
        wrk_output=output,
        rounds=[
            Round(
                figures.requests, figures.requests_per_second, figures.p50_ms, figures.p99_ms, peak
            )
        ],
    )


def measure_all(
    wrk: str,
    servers: Sequence[RunningServer],
    bodies: dict[int, bytes],
    directory: Path,
    duration: int,
    rounds: int,
) -> list[Result]:
    """Every cell, once per round, every other round backwards; each cell's rounds merged."""
    by_key = {server.spec.key: server for server in servers}
    planned = cells([server.spec for server in servers])
    each = max(1, round(duration / rounds))
    seconds = len(planned) * (WARMUP_SECONDS + each + (rounds - 1) * (REWARM_SECONDS + each))
    print(
        f"measuring {len(planned)} cells in {rounds} round(s) of {each} s, "
        f"about {seconds / 60:.1f} minutes",
        flush=True,
    )
    measured: list[list[Result]] = [[] for _ in planned]
    for turn in range(rounds):
        warmup = WARMUP_SECONDS if turn == 0 else REWARM_SECONDS
        # Every other round goes backwards: a server measured just after another at one setting
        # is measured just before it in the next round, so their order favours neither.
        order = list(enumerate(planned))
        for index, cell in order if turn % 2 == 0 else reversed(order):
            server = by_key[cell.server.key]
            result = measure(wrk, server, cell, bodies[cell.rows], directory, each, warmup)
            measured[index].append(result)
            print(
                f"[{turn + 1}/{rounds} {index + 1:2}/{len(planned)}] {server.spec.name:<20} "
                f"{cell.label:<38} {cell.connections:>2} conns {cell.rows:>2} rows: "
                f"{result.requests_per_second:8.1f} req/s  p50 {result.p50_ms:8.2f} ms  "
                f"p99 {result.p99_ms:8.2f} ms  errors {result.errors}",
                flush=True,
            )
    return [merge_rounds(results) for results in measured]
