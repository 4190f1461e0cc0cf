"""Server lifecycle: start MLflow's and the gateway's servers, wait until ready, stop them all."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import yaml

from benchmarks.gatewaybench.errors import BenchmarkError
from benchmarks.gatewaybench.plan import ServerSpec
from benchmarks.gatewaybench.procfs import group_members
from gateway.commands.demo import MODEL_NAME

READY_DEADLINE_SECONDS = 240.0
STOP_DEADLINE_SECONDS = 20.0
# Each gateway worker logs this once its models are loaded. With --workers N, /health answers
# from whichever worker accepts the probe, so it can pass while another worker is still loading.
GATEWAY_READY_LOG = "all models loaded; ready"


class RunningServer:
    """A server process (and its workers) in its own process group, logging to a file."""

    def __init__(self, spec: ServerSpec, directory: Path, tracking_uri: str) -> None:
        self.spec = spec
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / f"{spec.key}.log"
        env = _child_environment()
        if spec.source is not None:
            env["PYTHONPATH"] = str(spec.source)
        if spec.gateway_config is None:
            env["MLFLOW_TRACKING_URI"] = tracking_uri
            command = [
                *(sys.executable, "-m", "mlflow", "models", "serve"),
                *("-m", f"models:/{MODEL_NAME}@champion", "--env-manager", "local"),
                *("-w", str(spec.workers), "-h", "127.0.0.1", "-p", str(self.port)),
            ]
        else:
            config_path = directory / f"{spec.key}.yaml"
            config_path.write_text(yaml.safe_dump(spec.gateway_config), encoding="utf-8")
            command = [
                *(sys.executable, "-m", "gateway", "serve", "--config", str(config_path)),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                # INFO: readiness is read from each worker's "ready" line (see GATEWAY_READY_LOG).
                *("--workers", str(spec.workers), "--log-level", "INFO"),
            ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # `python -m` puts the working directory first on sys.path, before PYTHONPATH: a
                # server of another checkout must start in that checkout, or it runs this one.
                cwd=spec.source,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The server's own process id, also its process group id."""
        return self.process.pid

    def ready(self, client: httpx.Client) -> bool:
        """/health answers 200 and, for the gateway, every worker has logged that it is ready."""
        with contextlib.suppress(httpx.TransportError):
            if client.get(f"{self.url}/health").status_code != 200:
                return False
            if self.spec.gateway_config is None:
                return True
            log = self.log_path.read_text(encoding="utf-8", errors="replace")
            return log.count(GATEWAY_READY_LOG) >= self.spec.workers
        return False

    def check_alive(self) -> None:
        """Raise BenchmarkError, with the end of its log, if the server has exited."""
        if self.process.poll() is not None:
            raise BenchmarkError(
                f"{self.spec.name} exited with status {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 25) -> str:
        """The last `lines` lines of the server's log, indented for an error message."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "  (no log)"
        return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:])

    def signal_group(self, signum: int) -> None:
        """Send `signum` to every process of the server's group, if any is left."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def stopped(self) -> bool:
        """True once the server and every process of its group have exited."""
        self.process.poll()
        return not group_members(self.pid)


def _child_environment() -> dict[str, str]:
    """The servers' environment: no GATEWAY_* overrides, this interpreter's scripts on PATH."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    # The demo's models were trained by build_demo, in this run.
    env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "true"
    # `mlflow models serve` starts `uvicorn` from PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_servers(
    specs: Sequence[ServerSpec], directory: Path, tracking_uri: str
) -> Iterator[list[RunningServer]]:
    """Start every server and wait until all are ready; stop them all on the way out, always."""
    servers: list[RunningServer] = []
    try:
        for spec in specs:
            servers.append(RunningServer(spec, directory, tracking_uri))
        _wait_ready(servers)
        yield servers
    finally:
        _stop(servers)


def _wait_ready(servers: Sequence[RunningServer]) -> None:
    started = time.monotonic()
    deadline = started + READY_DEADLINE_SECONDS
    waiting = list(servers)
    print("waiting for " + ", ".join(f"{s.spec.name} ({s.spec.features})" for s in servers))
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while waiting:
            for server in list(waiting):
                server.check_alive()
                if server.ready(client):
                    waiting.remove(server)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(server.spec.name for server in waiting)
                tails = "\n".join(f"{s.spec.name}:\n{s.log_tail()}" for s in waiting)
                raise BenchmarkError(
                    f"not ready after {READY_DEADLINE_SECONDS:.0f} s: {names}\n{tails}"
                )
            time.sleep(0.2)
    print(f"all servers ready in {time.monotonic() - started:.1f} s")


def _stop(servers: Sequence[RunningServer]) -> None:
    """SIGTERM every process group, wait for them with one deadline, then SIGKILL what is left."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in _STOP_SIGNALS}
    try:
        for server in servers:
            server.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE_SECONDS
        while time.monotonic() < deadline and not all(server.stopped() for server in servers):
            time.sleep(0.1)
        for server in servers:
            if not server.stopped():
                print(f"{server.spec.name} did not stop in time; killing it", file=sys.stderr)
                server.signal_group(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.process.wait(STOP_DEADLINE_SECONDS)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
