"""The `encseg` command line: one typer app; each concern registers its own commands.

Every command turns expected failures (bad files, wrong sizes, refused input) into a one-line
error and a non-zero exit, never a traceback: raise `encseg.errors.UserError` for those.
"""

from __future__ import annotations

import importlib
import sys

import typer

from encseg.errors import UserError

app = typer.Typer(
    name="encseg",
    help="Privacy-preserving semantic segmentation with per-image keys (no key management).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that define `register(app)`; each adds the commands of one concern.
COMMAND_MODULES = [
    "encseg.cipher.commands",
    "encseg.service.commands",
    "encseg.models.commands",
    "encseg.attacks.commands",
    "encseg.data.commands",
    "encseg.engine.commands",
    "encseg.demo",
]


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_all()


def main() -> None:
    """Entry point: run the app, turning `UserError` into `error: ...` and exit status 2."""
    try:
        rc = app(standalone_mode=False)  # returns typer.Exit's code instead of raising it
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and friends
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
