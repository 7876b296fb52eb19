"""The ``coophash`` command-line tool: one module per verb group, gathered in the click group :data:`cli`.

Commands are imported when click needs them (running or listing them), not when this package is
imported: importing ``coophash.cli`` loads neither torch nor any command, and changes nothing (no
environment variable, no log handler).  :func:`main`, the console script, sets ``OMP_WAIT_POLICY``
before a command imports torch.

Errors have one boundary, :meth:`LazyGroup.invoke`: whatever a command raises (a bad file, a read-only
folder, a full disk, a missing device, an unknown name) ends as one ``Error: ...`` line on stderr with exit
status 2 for a usage error and 1 for a runtime error (:func:`coophash.cli.common.explain`); no traceback
unless ``coophash --debug`` (or ``COOPHASH_DEBUG=1``).  Click's own usage errors keep their form and status 2.

A new command: a ``click.command`` in a module of this package, plus one line in :data:`COMMANDS`.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any, Optional, Sequence

import click

__all__ = ["COMMANDS", "cli", "main"]

# command name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "train": "coophash.cli.train:train",
    "eval": "coophash.cli.evaluate:eval_cmd",
    "encode": "coophash.cli.codes:encode",
    "index": "coophash.cli.codes:index",
    "search": "coophash.cli.codes:search",
    "list": "coophash.cli.info:list_cmd",
    "demo": "coophash.cli.info:demo",
    "bench": "coophash.cli.bench:bench",
    "sample": "coophash.cli.coophash:sample",
    "gan": "coophash.cli.gan:gan",
    "serve": "coophash.cli.serve:serve",
}


class LazyGroup(click.Group):
    """A click group whose commands (name → ``module:attribute``) are imported on first use."""

    def __init__(self, *args: Any, lazy_commands: Optional[dict[str, str]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module, attr = self.lazy_commands[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; any exception but click's own becomes a one-line error (the error boundary).

        With ``--debug`` an unexpected exception keeps its traceback, and a one-line error that a command
        raised while handling another exception is preceded by that exception's traceback.
        """
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException as exc:
            cause = exc.__cause__ or exc.__context__
            if debug and isinstance(cause, Exception) and not isinstance(cause, click.exceptions.ClickException):
                traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if debug:
                raise
            from coophash.cli.common import explain

            raise explain(exc) from None


@click.group(cls=LazyGroup, lazy_commands=COMMANDS)
@click.option("--debug", is_flag=True, envvar="COOPHASH_DEBUG",
              help="Show the traceback of an error instead of its one-line message.")
@click.version_option(package_name="coophash")
def cli(debug: bool) -> None:
    """Supervised deep image hashing with generated data."""


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``coophash`` script."""
    # OpenMP threads that spin while waiting slow every step badly when the cores are shared (DESIGN.md §6);
    # set before torch (and its OpenMP runtime) is imported by a command. An explicit user setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cli.main(args=argv, prog_name="coophash")
