"""The load driver: find wrk, write its Lua script, run it and read its output."""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.gatewaybench.errors import BenchmarkError
from benchmarks.gatewaybench.plan import STICKY_HEADER, USER_IDS

# wrk's default (2 s) would count MLflow's slowest answers at 64 connections as timeouts and
# leave them out of its percentiles.
WRK_TIMEOUT = "10s"


def ensure_wrk() -> str:
    """The path of wrk; installs the Debian package when running as root, else explains how."""
    path = shutil.which("wrk")
    if path is not None:
        return path
    command = ["apt-get", "install", "-y", "wrk"]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchmarkError(
            "wrk is not installed; install it (Debian/Ubuntu: `sudo apt-get update && "
            "sudo apt-get install -y wrk`), or run with --smoke to check the servers only"
        )
    print("wrk is not installed; running `apt-get update` and `" + " ".join(command) + "`")
    for step in (["apt-get", "update"], command):
        completed = subprocess.run(step, check=False, timeout=600)
        if completed.returncode != 0:
            raise BenchmarkError(f"`{' '.join(step)}` failed with status {completed.returncode}")
    path = shutil.which("wrk")
    if path is None:
        raise BenchmarkError("apt-get installed wrk, but it is not on PATH")
    return path


def wrk_version(wrk: str) -> str:
    """wrk's version line (`wrk -v` prints it, then its usage, and exits with 1)."""
    completed = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    lines = (completed.stdout or completed.stderr).splitlines()
    return lines[0].strip() if lines else "wrk"


_STICKY_LUA = """
-- Each request carries the next of `users` fixed user ids in the `sticky_header` header; each
-- thread starts at a different id.
local thread_count = 0
function setup(thread)
  thread:set("first_user", thread_count * 4999)
  thread_count = thread_count + 1
end

local requests = {}
local current = 0
function init(args)
  for i = 1, users do
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    headers[sticky_header] = string.format("user-%05d", i - 1)
    requests[i] = wrk.format(nil, nil, headers)
  end
  current = (first_user or 0) % users
end

function request()
  current = current % users + 1
  return requests[current]
end
"""


def wrk_script(body: bytes, *, sticky_ids: bool) -> str:
    """Lua for wrk: POST `body` as JSON, with a varying X-User-Id header when `sticky_ids`."""
    text = body.decode("utf-8")
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    script = [
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        f"wrk.body = [{'=' * level}[{text}]{'=' * level}]",
    ]
    if sticky_ids:
        script += [f"users = {USER_IDS}", f'sticky_header = "{STICKY_HEADER}"', _STICKY_LUA]
    return "\n".join(script) + "\n"


@dataclass(frozen=True)
class WrkFigures:
    """What one wrk run reports: requests, rate, p50 and p99 latency, errors."""

    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> WrkFigures:
    """Requests, req/s, p50, p99 and errors (socket errors + non-2xx/3xx) from `wrk --latency`."""
    percentiles = {
        int(match["p"]): float(match["value"]) * _UNIT_MS[match["unit"]]
        for match in re.finditer(
            r"^\s+(?P<p>50|99)%\s+(?P<value>[\d.]+)(?P<unit>us|ms|s|m|h)\s*$",
            output,
            re.MULTILINE,
        )
    }
    requests = re.search(r"^\s+(\d+) requests in ", output, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if requests is None or rate is None or set(percentiles) != {50, 99}:
        raise BenchmarkError(f"cannot read wrk's output:\n{output}")
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors is not None:
        errors += sum(int(count) for count in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx is not None:
        errors += int(non_2xx.group(1))
    return WrkFigures(
        int(requests.group(1)), float(rate.group(1)), percentiles[50], percentiles[99], errors
    )


def run_wrk(wrk: str, url: str, script: Path, connections: int, seconds: int) -> str:
    """Run wrk against `url`/invocations with `script`; return its output."""
    threads = min(connections, 2)
    command = [
        *(wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"),
        *("--timeout", WRK_TIMEOUT, "--latency", "-s", str(script), f"{url}/invocations"),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=seconds + 60
    )
    if completed.returncode != 0:
        raise BenchmarkError(f"wrk failed ({completed.returncode}):\n{completed.stderr}")
    return completed.stdout
