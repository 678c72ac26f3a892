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


def _click_exceptions() -> tuple[type[BaseException], ...]:
    """ClickException from click and from the copy of click that typer vendors (typer._click)."""
    classes = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            classes.append(importlib.import_module(name).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main() -> None:
    """Entry point: run the app; usage errors and `UserError` become one line and a non-zero exit.

    Usage errors (a missing argument, a value click cannot convert or that is out of range) exit 2
    with `error: ...`; so do UserErrors; a full disk or another OS error exits 1 with one line."""
    click_errors = _click_exceptions()
    try:
        rc = app(standalone_mode=False)  # returns typer.Exit's code instead of raising it
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except UserError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click_errors as exc:  # usage errors: bad or missing options and arguments
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except RecursionError:
        print("error: the input is nested too deeply to read", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        print("error: out of memory (the input is too large for this machine)", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # a full disk, a read-only folder, a directory where a file was expected
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        sys.exit(1)
