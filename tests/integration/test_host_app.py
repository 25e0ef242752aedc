"""The package inside someone else's service: their Celery app, their `worker` module, their
logging; a clean install from the source tree; our worker's command-line options."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from celery import Celery

from adjustments import Producer, Record, RecordNotFound, Status, StoreUnavailable
from adjustments.embedded import free_port
from tests.helpers import WorkerProcess, start_celery_process, stop_worker, wait_until

ROOT = Path(__file__).resolve().parents[2]
CELERY = [sys.executable, "-m", "celery"]
QUIET = ["--without-gossip", "--without-mingle"]

# The host's own tasks module: it imports adjustments (as a service does to enqueue), binds
# its own structlog context, uses its own log format, and sits next to its own worker.py.
HOST_APP = textwrap.dedent(
    """
    import os

    import structlog
    from celery import Celery

    import worker  # the host's own module named `worker`
    from adjustments import Producer

    app = Celery("hostapp", broker=os.environ["HOST_BROKER_URL"])
    app.conf.worker_log_format = "HOSTLOG %(levelname)s %(message)s"
    app.conf.worker_task_log_format = "HOSTLOG %(levelname)s %(message)s"
    structlog.contextvars.bind_contextvars(tenant="acme")  # bound once, for every task

    @app.task(name="hostapp.refund")
    def refund(identifier):
        tenant = structlog.contextvars.get_contextvars().get("tenant")
        with Producer(os.environ["REDIS_URL"]) as producer:
            record = producer.cancel("api_requests", identifier, api="v1")
        print(f"HOSTTASK {identifier} tenant={tenant} record={record.id} {worker.NAME}")
        return record.id
    """
)


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    (tmp_path / "hostapp.py").write_text(HOST_APP)
    (tmp_path / "worker.py").write_text("NAME = 'the-hosts-own-worker-module'\n")
    return tmp_path


def host_env(worker_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in worker_env.items() if not k.startswith(("ADJUSTMENTS_", "STRIPE_"))}
    # The host's broker: another database of the same server, its own default queue.
    env["HOST_BROKER_URL"] = worker_env["REDIS_URL"].rsplit("/", 1)[0] + "/5"
    return env


@pytest.mark.usefixtures("clean")
class TestInsideAHostCeleryApp:
    def test_host_worker_keeps_its_logging_and_context_and_our_worker_runs_its_requests(
        self,
        host_dir: Path,
        worker: WorkerProcess,
        worker_env: dict[str, str],
        settle: Callable[[str], Record],
    ) -> None:
        """A host worker whose tasks module imports adjustments keeps its own log format,
        its `Task ... succeeded` lines and its bound context; the requests its tasks enqueue
        are carried out by our worker."""
        env = host_env(worker_env)
        log_path = host_dir / "host.log"
        host = start_celery_process(
            [*CELERY, "-A", "hostapp", "worker", "--pool=solo", "--loglevel=INFO", *QUIET],
            env,
            log_path,
            cwd=host_dir,
        )
        try:
            sender = Celery("caller", broker=env["HOST_BROKER_URL"], set_as_current=False)
            with sender:
                for n in range(3):
                    sender.send_task("hostapp.refund", args=(f"host_{n}",))
            wait_until(
                lambda: log_path.read_text().count(" succeeded in ") == 3,
                what="three host tasks to succeed",
            )
        finally:
            stop_worker(host)
        log = log_path.read_text()
        succeeded = [line for line in log.splitlines() if " succeeded in " in line]
        assert all(line.startswith("HOSTLOG INFO Task hostapp.refund[") for line in succeeded)
        # Celery logs what a task prints, in the host's format.
        tasks = [line for line in log.splitlines() if "HOSTTASK" in line]
        assert all(line.startswith("HOSTLOG ") for line in tasks)
        assert len(tasks) == 3
        assert all("tenant=acme" in t and "the-hosts-own-worker-module" in t for t in tasks)
        assert '"event"' not in log  # none of our JSON lines in the host's log
        for line in tasks:
            record_id = line.split("record=")[1].split()[0]
            assert settle(record_id).status is Status.PENDING


@pytest.mark.usefixtures("clean")
class TestLibraryCalls:
    def test_cancel_tells_new_from_duplicate_and_find_looks_it_up(
        self, producer: Producer, settle: Callable[[str], Record]
    ) -> None:
        """record.created tells a new request from a duplicate; find() looks it up by what was
        cancelled."""
        first = producer.cancel("ev", "lib_1", api="v2", stripe_account="acct_1A/acct_2B")
        again = producer.cancel("ev", "lib_1", api="v2", stripe_account="acct_1A/acct_2B")
        assert (first.created, again.created, again.id) == (True, False, first.id)
        found = producer.find("ev", "lib_1", api="v2", stripe_account="acct_1A/acct_2B")
        assert found.id == first.id and found.created is False
        with pytest.raises(RecordNotFound):
            producer.find("ev", "lib_1", api="v2")  # another account: another request
        assert settle(first.id).status is Status.PENDING

    def test_reads_without_redis_raise_our_error(self, worker_env: dict[str, str]) -> None:
        """get/find/list/stats on an unreachable Redis: StoreUnavailable, not redis-py's."""
        with Producer(f"redis://127.0.0.1:{free_port()}/0") as producer:
            for call in (
                lambda: producer.get("adj_x"),
                lambda: producer.find("ev", "x"),
                lambda: producer.latest(),
                lambda: producer.stats(),
            ):
                with pytest.raises(StoreUnavailable) as info:
                    call()
                assert not isinstance(info.value, redis.RedisError)


class TestCleanInstall:
    @pytest.mark.slow
    def test_installs_without_warnings_and_ignores_a_users_worker_module(
        self, tmp_path: Path, worker_env: dict[str, str]
    ) -> None:
        """`pip install <clone>` prints no warning; next to a user's worker.py, `import worker`
        is theirs, `from adjustments import Producer` is ours, and `celery -A
        adjustments.celery_app worker` starts."""
        site = tmp_path / "site"
        out = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(ROOT)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        assert out.returncode == 0, out.stderr
        warnings = [
            line
            for line in (out.stdout + out.stderr).splitlines()
            if "warning" in line.lower() and "Location 'file:" not in line
        ]
        assert warnings == []
        assert (site / "adjustments" / "lua" / "claim.lua").exists()
        assert (site / "adjustments" / "py.typed").exists()
        assert (site / "adjustments" / "http" / "templates" / "overview.html").exists()
        assert (site / "adjustments" / "http" / "static" / "console.css").exists()
        user = tmp_path / "service"
        user.mkdir()
        (user / "worker.py").write_text("X = 'users-worker'\n")
        env = {**worker_env, "PYTHONPATH": str(site)}
        check = subprocess.run(
            [
                sys.executable,
                "-c",
                "import worker, adjustments; from adjustments import Producer; "
                "print(worker.X, adjustments.__file__)",
            ],
            cwd=user,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        assert check.stdout.startswith("users-worker ") and str(site) in check.stdout
        queue = f"clean_install_{os.getpid()}"
        handle = start_celery_process(
            [*CELERY, "-A", "adjustments.celery_app", "worker", "-Q", queue, *QUIET],
            {**env, "ADJUSTMENTS_QUEUE": queue},
            tmp_path / "celery.log",
            cwd=user,
        )
        stop_worker(handle)


class TestWorkerCommand:
    def test_options_pass_through_and_node_names_are_unique(
        self, tmp_path: Path, worker_env: dict[str, str]
    ) -> None:
        """`adjustments worker -- -E` reaches Celery, and the default node name carries the
        process id, so two workers on one host never share one."""
        queue = f"passthrough_{os.getpid()}"
        env = {**worker_env, "ADJUSTMENTS_QUEUE": queue}
        argv = [sys.executable, "-m", "adjustments.cli", "worker", "-c", "2", "--", "-E"]
        handles: list[WorkerProcess] = []
        try:
            for n in range(2):
                handles.append(start_celery_process(argv, env, tmp_path / f"w{n}.log"))
        finally:
            for handle in handles:
                stop_worker(handle)
        for handle in handles:
            banner = handle.log_text()
            assert f"adjustments-{handle.process.pid}@" in banner
            assert "task events: ON" in banner
