"""Three replicas on one shared registry (MLflow on PostgreSQL), as a fleet runs in production.

Sticky routing agrees across every worker of every replica, one registry write reaches all of them
within two refresh intervals, and a replica killed outright rejoins with the same assignments while
the others serve on. Each test sets the registry state it starts from, so any one runs alone.
"""

import contextlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
import yaml

from gateway.core.rollout import WEIGHTS_TAG
from gateway.core.routing import choose_sticky
from gateway.serving.registry import Registry
from tests.integration import models
from tests.integration.conftest import (
    BackgroundLoad,
    free_port,
    split_payload,
    wait_healthy,
    wait_until,
)
from tests.integration.test_cli import GatewayProcess

pytestmark = pytest.mark.multireplica

MODEL = "fleet"
REPLICAS = 3
WORKERS = 2
REFRESH_SECONDS = 1.0
# Two refresh intervals, plus slack for six processes sharing a small CI machine.
PROPAGATION_DEADLINE = 2 * REFRESH_SECONDS + 3.0
USERS = tuple(f"user-{n}" for n in range(60))
ROW: list[object] = [4, 89.5, 4, "basic"]


@dataclass(frozen=True)
class Answer:
    """What a client sees of one invocation: who served it, and the prediction."""

    variant: str
    version: str
    prediction: int

    @classmethod
    def of(cls, response: httpx.Response) -> "Answer":
        """The answer in a 200 response to a one-row request."""
        (prediction,) = response.json()["predictions"]
        return cls(
            response.headers["x-gateway-variant"],
            response.headers["x-gateway-model-version"],
            prediction,
        )


@dataclass(frozen=True)
class State:
    """What the registry says: live weights, and the version each variant's alias points at."""

    weights: dict[str, int]
    versions: dict[str, str]

    def expected(self, user: str) -> Answer:
        """The answer `user` must get: version N of `fleet` predicts N."""
        variant = choose_sticky(MODEL, user, self.weights)
        version = self.versions[variant]
        return Answer(variant, version, int(version))


# The config's weights; versions 1 and 2 are registered with these aliases, version 3 with none.
INITIAL = State({"champion": 50, "challenger": 50}, {"champion": "1", "challenger": "2"})


def _postgres_bindir() -> Path | None:
    """The directory holding `initdb` and `postgres`: pg_config's, else the newest Debian one."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if found.returncode == 0:
            candidates.append(Path(found.stdout.strip()))
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    return next(
        (
            path
            for path in candidates
            if (path / "initdb").is_file() and (path / "postgres").is_file()
        ),
        None,
    )


def _postgres_account() -> pwd.struct_passwd | None:
    """The unprivileged account to run PostgreSQL as when this is root (it refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "postgres"], check=True
        )
        return pwd.getpwnam("postgres")


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback with an empty database `mlflow`."""
    bindir = _postgres_bindir()
    if bindir is None:
        message = (
            "PostgreSQL is not installed: run scripts/postgres-for-tests as root"
            " (apt-get update && apt-get install -y postgresql)"
        )
        # In CI this test must run: a missing PostgreSQL there is a failure, not a skip.
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    account = _postgres_account()
    run_as: dict[str, Any] = {}
    # Not under pytest's base temp: that is private to this user, and the server may run as another.
    base = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
    if account is not None:
        os.chown(base, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    data, port = base / "data", free_port()
    log = (base / "postgres.log").open("wb")
    process = None
    try:
        initdb: list[str | Path] = [
            bindir / "initdb",
            "-D",
            data,
            "-U",
            "mlflow",
            "--auth=trust",
            "--no-sync",
        ]
        subprocess.run(
            [*initdb, "--no-locale", "--encoding=UTF8"],
            cwd=base,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            **run_as,
        )
        server: list[str | Path] = [
            bindir / "postgres",
            "-D",
            data,
            "-k",
            base,
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
        ]
        # Durability is of no use to a cluster that lives for one test module.
        unsafe = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        process = subprocess.Popen(
            [*server, *unsafe],
            cwd=base,
            stdout=log,
            stderr=subprocess.STDOUT,
            **run_as,
        )
        address = ["-h", "127.0.0.1", "-p", str(port), "-U", "mlflow"]

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(
                    f"postgres exited with {process.returncode}: {_tail(base / 'postgres.log')}"
                )
            return subprocess.run([bindir / "pg_isready", "-q", *address]).returncode == 0

        wait_until(ready, "PostgreSQL to accept connections")
        subprocess.run([bindir / "createdb", *address, "mlflow"], check=True)
        # The driver is named: SQLAlchemy's default for `postgresql://` changed in 2.1.
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on PostgreSQL, artifacts proxied; versions 1-3 of `fleet` registered."""
    if importlib.util.find_spec("psycopg2") is None:
        pytest.fail("MLflow's PostgreSQL store needs psycopg2: pip install -e '.[test]'")
    base = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    # MLflow starts its server as `uvicorn ...` by name: the interpreter's bin first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    leaked = {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"}
    env = {key: value for key, value in os.environ.items() if key not in leaked}
    # No background job runner: nothing here submits jobs, and it would be one more process.
    env |= {"PATH": path, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres_uri]
    command += ["--serve-artifacts", "--artifacts-destination", str(base / "artifacts")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log_path = base / "server.log"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    with log_path.open("wb") as log:
        # A session of its own, so that its uvicorn child is stopped with it.
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:

            def answering() -> bool:
                if process.poll() is not None:
                    pytest.fail(
                        f"mlflow server exited with {process.returncode}: {_tail(log_path)}"
                    )
                return httpx.get(f"{uri}/health").status_code == 200

            # The first start creates the schema in PostgreSQL: slower than sqlite's.
            wait_until(answering, "mlflow server", deadline=120)
            _register_fleet(uri)
            yield uri
        finally:
            _stop_group(process)
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])


def _register_fleet(uri: str) -> None:
    # The default artifact location of a server with --serve-artifacts: mlflow-artifacts:/...
    mlflow.MlflowClient(uri, uri).create_experiment("gateway-demo")
    for alias, marker in (("champion", 1), ("challenger", 2), ("champion", 3)):
        version = models.register(MODEL, alias, models.ConstantModel(marker), uri)
        assert version == str(marker)
    # Version 3 waits for the alias move; champion goes back to version 1.
    Registry(uri, None).set_alias(MODEL, "champion", INITIAL.versions["champion"])


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


class Replica:
    """One `gateway serve --workers 2`, and what its JSON log says about its workers."""

    def __init__(self, config_path: Path) -> None:
        self.gateway = GatewayProcess(
            *("serve", "--config", str(config_path), "--port", "0"),
            *("--workers", str(WORKERS), "--log-format", "json"),
            env={"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"},
        )
        self.url = ""

    def wait_ready(self) -> None:
        """Wait until it listens and every worker has loaded its models."""
        self.url = self.gateway.url()
        wait_healthy(self.url, f"both workers of {self.url}")

    def mark(self) -> int:
        """A position in the log: events after it are the ones that follow."""
        return len(self.gateway.lines)

    def events(self, since: int = 0) -> list[tuple[int, str]]:
        """(pid, message) of each log record after `since`."""
        found = []
        for line in self.gateway.lines[since:]:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                found.append((int(record["process"]), str(record["message"])))
        return found

    def worker_pids(self) -> set[int]:
        """The pid of each worker the supervisor runs now."""
        started = {}
        for _, message in self.events():
            if match := re.fullmatch(r"started worker (\d+) \(pid (\d+)\)", message):
                started[match[1]] = int(match[2])
        return set(started.values())

    def logged_by_every_worker(self, message: str, since: int) -> bool:
        """Whether each worker has logged `message` (or a message starting so) after `since`."""
        said = {pid for pid, text in self.events(since) if text.startswith(message)}
        return len(self.worker_pids()) == WORKERS and self.worker_pids() <= said

    def kill(self) -> None:
        """SIGKILL the supervisor, as a crash would, then the workers it leaves behind."""
        family = _descendants(self.gateway.process.pid)
        self.gateway.process.kill()
        _kill_all(family)
        # Only now: an orphaned worker holds the log pipe open, and reading it to its end waits.
        self.gateway.wait()


def _stop_all(replicas: list[Replica]) -> None:
    """SIGTERM every replica at once, then SIGKILL whatever is left of each after a deadline."""
    families = [_descendants(replica.gateway.process.pid) for replica in replicas]
    for replica in replicas:
        if replica.gateway.process.poll() is None:
            replica.gateway.process.terminate()
    deadline = time.monotonic() + 60
    for replica, family in zip(replicas, families, strict=True):
        with contextlib.suppress(subprocess.TimeoutExpired):
            replica.gateway.process.wait(max(0.0, deadline - time.monotonic()))
        replica.gateway.process.kill()
        _kill_all(family)
        replica.gateway.wait()


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on: the command before it may hold spaces and ')'."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _descendants(root: int) -> dict[int, str]:
    """Every process below `root`, pid to start time: spawned workers outlive a killed parent."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat(int(entry.name))
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    family: dict[int, str] = {}
    frontier = [root]
    while frontier:
        found = [child for parent in frontier for child in children.get(parent, [])]
        family.update(found)
        frontier = [pid for pid, _ in found]
    return family


def _alive(pid: int, started: str) -> bool:
    """Whether that very process (not a later one with its pid) is still running."""
    try:
        fields = _stat(pid)
    except (OSError, IndexError):
        return False
    return fields[19] == started and fields[0] not in {"Z", "X"}


def _kill_all(family: dict[int, str]) -> None:
    for pid, started in family.items():
        if _alive(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: not any(_alive(pid, started) for pid, started in family.items()),
        f"processes {sorted(family)} to exit",
    )


class Fleet:
    """The replicas, the registry they follow, and the state it was last brought to."""

    def __init__(self, tracking_uri: str, config_path: Path, log_dir: Path) -> None:
        self.registry = Registry(tracking_uri, None)
        self.config_path = config_path
        self.log_dir = log_dir
        self.replicas: list[Replica] = []
        self.state = INITIAL

    def start_replica(self) -> Replica:
        """Start one more replica (ready later: call `wait_ready`)."""
        replica = Replica(self.config_path)
        self.replicas.append(replica)
        return replica

    def apply(self, state: State) -> float:
        """Write what differs from the current state once; seconds until every worker had it.

        Fails unless every worker of every replica logs the change within the deadline.
        """
        messages = []
        if state.weights != self.state.weights:
            messages.append(f"endpoint {MODEL} weights now {state.weights}")
        moved = [v for v in state.versions if state.versions[v] != self.state.versions[v]]
        messages += [
            f"endpoint {MODEL} variant {v} now serves version {state.versions[v]} " for v in moved
        ]
        marks = [replica.mark() for replica in self.replicas]
        started = time.monotonic()
        if state.weights != self.state.weights:
            self.registry.set_tag(MODEL, WEIGHTS_TAG, json.dumps(state.weights))
        for variant in moved:
            self.registry.set_alias(MODEL, variant, state.versions[variant])
        self.state = state
        wait_until(
            lambda: all(
                replica.logged_by_every_worker(message, mark)
                for replica, mark in zip(self.replicas, marks, strict=True)
                for message in messages
            ),
            f"{' and '.join(messages) or 'nothing'} on every worker of every replica",
            deadline=PROPAGATION_DEADLINE,
        )
        return time.monotonic() - started

    def ask_everyone(self, tag: str) -> dict[tuple[int, str], Answer]:
        """Every user asked on every replica, each request on a new connection."""
        return {
            (index, user): answer
            for index, replica in enumerate(self.replicas)
            for user, answer in _ask(replica.url, f"{tag}-{index}").items()
        }

    def answering_pids(self, request_ids: set[str]) -> dict[str, int]:
        """The pid of the worker that answered each request, from the inference logs' file names."""
        found = {}
        # Files are `inference-{host}-{pid}-{start}-{sequence}.jsonl`.
        for path in self.log_dir.glob("*.jsonl"):
            pid = int(path.name.rsplit("-", 3)[1])
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    request_id = json.loads(line)["request_id"]
                    if request_id in request_ids:
                        found[request_id] = pid
        return found


def _new_connections() -> httpx.Client:
    """A client that opens a connection a request: either worker of a replica may accept it."""
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30)


def _ask(url: str, tag: str) -> dict[str, Answer]:
    """Every user's answer from one replica; request ids are `{tag}-{user}`."""
    answers = {}
    with _new_connections() as client:
        for user in USERS:
            response = client.post(
                f"{url}/invocations",
                json=split_payload([ROW]),
                headers={"X-User-Id": user, "x-request-id": f"{tag}-{user}"},
            )
            assert response.status_code == 200, response.text
            answers[user] = Answer.of(response)
    return answers


@pytest.fixture(scope="module")
def fleet(tracking_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three replicas of one config, each `--workers 2`, following the registry every second."""
    base = tmp_path_factory.mktemp("fleet")
    document = {
        "tracking_uri": tracking_server,
        "endpoints": [
            {
                "name": MODEL,
                "model": MODEL,
                "variants": [
                    {"alias": variant, "weight": weight}
                    for variant, weight in INITIAL.weights.items()
                ],
                "sticky": {"header": "X-User-Id"},
                "refresh_seconds": REFRESH_SECONDS,
            }
        ],
        "inference_log": {"dir": str(base / "inference-logs")},
    }
    config_path = base / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(document))
    fleet = Fleet(tracking_server, config_path, base / "inference-logs")
    try:
        for _ in range(REPLICAS):
            fleet.start_replica()
        for replica in fleet.replicas:
            replica.wait_ready()
        yield fleet
    finally:
        _stop_all(fleet.replicas)


def test_a_user_gets_the_same_variant_from_every_worker_of_every_replica(fleet: Fleet) -> None:
    fleet.apply(INITIAL)
    answers = fleet.ask_everyone("sticky")
    for user in USERS:
        assert {answers[index, user] for index in range(REPLICAS)} == {INITIAL.expected(user)}
    assert {answer.variant for answer in answers.values()} == {"champion", "challenger"}
    # Every worker of every replica answered some of them.
    request_ids = {f"sticky-{index}-{user}" for index, user in answers}
    pids: dict[str, int] = {}

    def all_logged() -> bool:
        pids.update(fleet.answering_pids(request_ids))
        return len(pids) == len(request_ids)

    wait_until(all_logged, "the inference-log record of every answer")
    for index, replica in enumerate(fleet.replicas):
        answered = {pids[f"sticky-{index}-{user}"] for user in USERS}
        assert answered == replica.worker_pids(), replica.url


def test_a_weight_change_written_once_reaches_every_replica_within_two_refreshes(
    fleet: Fleet,
) -> None:
    fleet.apply(INITIAL)
    all_champion = replace(INITIAL, weights={"champion": 100, "challenger": 0})
    took = fleet.apply(all_champion)
    print(f"\nweights 50/50 -> 100/0 reached {REPLICAS * WORKERS} workers in {took:.2f}s")
    for (_, user), answer in fleet.ask_everyone("weights").items():
        assert answer == Answer("champion", "1", 1), user


def test_an_alias_move_written_once_reaches_every_replica_within_two_refreshes(
    fleet: Fleet,
) -> None:
    all_champion = replace(INITIAL, weights={"champion": 100, "challenger": 0})
    fleet.apply(all_champion)
    took = fleet.apply(replace(all_champion, versions={"champion": "3", "challenger": "2"}))
    print(f"\nchampion 1 -> 3 loaded and serving on {REPLICAS * WORKERS} workers in {took:.2f}s")
    for (_, user), answer in fleet.ask_everyone("alias").items():
        assert answer == Answer("champion", "3", 3), user


class Load(BackgroundLoad):
    """Bounded load on some replicas: new connections, users in turn, every outcome kept."""

    def __init__(self, urls: list[str], state: State, limit: int = 5_000) -> None:
        self.state = state
        self.outcomes: list[tuple[str, str]] = []  # (user, "ok" or what went wrong)
        self._deadline = time.monotonic() + 120
        super().__init__([partial(self._run, url, limit) for url in urls])

    def _run(self, url: str, limit: int) -> None:
        with _new_connections() as client:
            for n in range(limit):
                if self.stopped.is_set() or time.monotonic() > self._deadline:
                    return
                user = USERS[n % len(USERS)]
                self.outcomes.append((user, self._outcome(client, url, user)))

    def _outcome(self, client: httpx.Client, url: str, user: str) -> str:
        try:
            response = client.post(
                f"{url}/invocations", json=split_payload([ROW]), headers={"X-User-Id": user}
            )
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return f"{response.status_code}: {response.text}"
        answer = Answer.of(response)
        return "ok" if answer == self.state.expected(user) else f"got {answer}"


def test_a_killed_replica_rejoins_with_the_same_assignments_while_the_others_serve_on(
    fleet: Fleet,
) -> None:
    # Weights that only the registry holds: the restarted replica must read them at start.
    split = State({"champion": 70, "challenger": 30}, fleet.state.versions)
    configured = replace(split, weights=INITIAL.weights)
    assert any(split.expected(user) != configured.expected(user) for user in USERS)
    fleet.apply(split)
    victim, survivors = fleet.replicas[0], fleet.replicas[1:]
    before = _ask(victim.url, "before")
    assert before == {user: split.expected(user) for user in USERS}
    old_url = victim.url
    with Load([replica.url for replica in survivors], split) as load:
        victim.kill()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{old_url}/ping")
        killed_at = len(load.outcomes)
        started = time.monotonic()
        restarted = Replica(fleet.config_path)
        fleet.replicas[0] = restarted
        restarted.wait_ready()
        took = time.monotonic() - started
    failed = [outcome for outcome in load.outcomes if outcome[1] != "ok"]
    print(
        f"\nreplica restarted in {took:.1f}s; {len(load.outcomes)} requests to the other two"
        f" ({len(load.outcomes) - killed_at} while it was down or starting), {len(failed)} failed"
    )
    assert failed == []
    assert len(load.outcomes) - killed_at > 100
    assert restarted.url != old_url
    assert _ask(restarted.url, "after") == before
