"""Run the app under uvicorn: one process, or N worker processes sharing one listening socket."""

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn

from gateway.core.config import GatewayConfig
from gateway.http.app import create_app
from gateway.http.protocol import protocol_for
from gateway.observe import metrics
from gateway.observe.logconfig import LogFormat, configure_logging
from gateway.serving.runtime import build_runtime

logger = logging.getLogger(__name__)

STARTUP_FAILED = 3
# A worker that dies this soon after it started is failing to start, not crashing in service.
_EARLY_EXIT_SECONDS = 10.0
_GRACE_SECONDS = 30.0


class _Server(uvicorn.Server):
    """uvicorn's server, which after a graceful stop on SIGINT/SIGTERM returns instead of dying.

    uvicorn re-raises the signal it caught once it has drained, so the process ends killed by
    it (status -15) even though every request was answered and every record written; a clean
    stop of the gateway exits 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Stop on SIGINT/SIGTERM while serving; restore the former handlers, re-raise nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {
            signum: signal.signal(signum, self.handle_exit)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for signum, handler in original.items():
                signal.signal(signum, handler)


# Workers listen on sockets of their own on one port, and the kernel spreads new connections
# over them evenly. With one shared listening socket, whichever worker wakes first takes the
# connection, and under load one worker ends up with nearly all of them.
REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int, *, workers: int = 1, listen: bool | None = None) -> socket.socket:
    """The server's socket, bound before any worker starts, so that a busy port fails at once.

    For one worker it is the listening socket. For several (where SO_REUSEPORT exists) it only
    reserves the port, and each worker listens on a socket of its own bound to the same port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    shared_port = workers > 1 and REUSE_PORT
    if shared_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if (not shared_port) if listen is None else listen:
        sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    config: GatewayConfig,
    sock: socket.socket,
    *,
    workers: int = 1,
    log_level: str = "INFO",
    log_format: LogFormat = "text",
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM; the exit status: 0, or non-zero when the models cannot load."""
    if workers == 1:
        return _serve_here(config, sock, on_ready)
    return _supervise(config, sock, workers, log_level, log_format)


def _serve_here(
    config: GatewayConfig,
    sock: socket.socket,
    on_ready: Callable[[], None] | None = None,
    peers_ready: Callable[[], bool] | None = None,
    supervisor: int | None = None,
) -> int:
    failed = threading.Event()
    if supervisor is not None:
        _stop_when_orphaned(supervisor, lambda: setattr(server, "should_exit", True))

    def fatal() -> None:
        failed.set()
        server.should_exit = True

    runtime = build_runtime(config, on_ready=on_ready, on_fatal=fatal)
    app = create_app(runtime, peers_ready=peers_ready)
    server = _Server(
        uvicorn.Config(
            app,
            http=protocol_for(config, runtime.service.refuse_on_arrival),
            lifespan="on",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(_GRACE_SECONDS),
            server_header=False,
        )
    )
    server.run(sockets=[sock])
    return STARTUP_FAILED if failed.is_set() else 0


def _stop_when_orphaned(supervisor: int, stop: Callable[[], None]) -> None:
    """Stop this worker if its supervisor dies without stopping it (SIGKILL, OOM kill).

    Without this, orphaned workers would go on serving the port, unseen and unmanaged.
    """

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(1.0)
        logger.error("the supervisor (pid %d) is gone; stopping this worker", supervisor)
        stop()

    threading.Thread(target=watch, name="gateway-orphan-watch", daemon=True).start()


def _worker(
    config: GatewayConfig,
    listener: socket.socket,
    log_level: str,
    log_format: LogFormat,
    readiness: Any,
    index: int,
) -> None:
    def ready() -> None:
        readiness[index] = 1

    def all_ready() -> bool:
        return all(readiness)

    if REUSE_PORT:
        host, port = listener.getsockname()[:2]
        sock = bind(host, port, workers=2, listen=True)
    else:
        sock = listener
    # A spawned worker is a new process: its logging is configured here, once.
    configure_logging(log_level, log_format)
    sys.exit(_serve_here(config, sock, ready, all_ready, os.getppid()))


def _supervise(
    config: GatewayConfig, sock: socket.socket, workers: int, log_level: str, log_format: LogFormat
) -> int:
    """Start `workers` processes on the shared socket; restart crashed ones; stop all on a signal."""
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    # One flag a worker, set once its models are loaded: /health on any worker is 200 only when
    # all are, so a readiness probe never sends traffic to a pod with a worker still loading.
    readiness = context.Array("b", workers, lock=False)

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)

    def start(index: int) -> tuple[BaseProcess, float]:
        readiness[index] = 0
        process = context.Process(
            target=_worker,
            args=(config, sock, log_level, log_format, readiness, index),
            name=f"gateway-worker-{index}",
        )
        process.start()
        logger.info("started worker %d (pid %s)", index, process.pid)
        return process, time.monotonic()

    running = [start(index) for index in range(workers)]
    status = 0
    while not stopping.wait(0.2):
        for index, (process, started) in enumerate(running):
            if process.is_alive():
                continue
            if process.pid is not None:
                metrics.worker_exited(process.pid)
            if (
                process.exitcode == STARTUP_FAILED
                or time.monotonic() - started < _EARLY_EXIT_SECONDS
            ):
                logger.error(
                    "worker %d failed to start (exit %s); stopping", index, process.exitcode
                )
                status = 1
                stopping.set()
                break
            logger.warning("worker %d exited with %s; restarting it", index, process.exitcode)
            running[index] = start(index)
    _stop_all([process for process, _ in running])
    return status


def _stop_all(processes: list[BaseProcess]) -> None:
    """SIGTERM every worker, wait for them to drain, then kill what is left."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + _GRACE_SECONDS + 5
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            logger.warning("worker pid %s did not stop in time; killing it", process.pid)
            process.kill()
            process.join()
