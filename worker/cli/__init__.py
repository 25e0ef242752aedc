"""The ``adjustments`` command: a thin shell over the producer, the worker and the sandbox.

Bad input prints one line on stderr and exits 2, before anything is written.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Sequence

import click
import redis
from click.exceptions import NoArgsIsHelpError

from ..errors import AdjustmentsError, ConfigError, InvalidInput, RecordNotFound
from ..logging import configure as configure_logging
from ..redact import redact
from ..text import printable

_SURROGATE = re.compile("[\ud800-\udfff]")

# Each command by the module that defines it: a command loads only its own module, so
# `adjustments cancel` does not import the HTTP server, Prometheus, the worker's code or the
# Stripe SDK (click's documented lazy-loading pattern).
COMMANDS = {
    "cancel": "records:cancel",
    "status": "records:status",
    "list": "records:list_",
    "stats": "records:stats",
    "health": "records:health",
    "workers": "records:workers_cmd",
    "serve": "serve:serve_cmd",
    "metrics": "services:metrics_cmd",
    "worker": "services:worker_cmd",
    "beat": "services:beat_cmd",
    "sandbox": "local:sandbox",
    "demo": "local:demo",
    "embedded": "services:embedded_group",
    "replay": "recovery:replay_cmd",
    "compensate": "recovery:compensate_cmd",
    "export": "recovery:export_cmd",
    "reconcile": "recovery:reconcile_cmd",
    "import": "recovery:import_cmd",
}


class LazyGroup(click.Group):
    """A group whose commands are imported when one is asked for (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, name = target.split(":")
        command = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adjustments")
def cli() -> None:
    """Cancel Stripe meter events through a queue, with retries, records and replay."""
    # Log lines go to stderr so that stdout carries only the command's output (--json).
    # The worker and beat re-point them at stdout when Celery sets up logging.
    configure_logging(stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: click's errors and ours become one line on stderr."""
    for arg in sys.argv[1:] if argv is None else argv:
        if _SURROGATE.search(arg):  # bytes that are not UTF-8: no command could use them
            _fail(f"argument {printable(arg)} is not valid UTF-8 text", 2)
    try:
        code = cli.main(args=argv, prog_name="adjustments", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # bare `adjustments`: the whole help, as click lays it out
        click.echo(exc.ctx.get_help() if exc.ctx else cli.get_usage(click.Context(cli)), err=True)
        sys.exit(2)
    except click.UsageError as exc:
        _fail(exc.format_message(), 2)
    except (InvalidInput, ConfigError) as exc:
        _fail(str(exc), 2)
    except RecordNotFound as exc:
        _fail(f"no such request: {exc.args[0]}", 1)
    except click.Abort:
        _fail("aborted", 130)
    except redis.RedisError as exc:
        _fail(f"cannot reach Redis: {exc}", 1)
    except AdjustmentsError as exc:
        _fail(str(exc), 1)
    except Exception as exc:  # anything else still ends as one line and a failure
        _fail(f"{type(exc).__name__}: {exc}", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    first = printable(redact(" ".join(message.split())))
    click.echo(f"adjustments: error: {first}", err=True)
    sys.exit(code)
