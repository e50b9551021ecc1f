"""Errors that the command line turns into one-line messages and exit codes.

A user mistake (bad file, config, argument, bundle) raises :class:`UserError`:
the CLI prints its message on one line and exits 2, never a traceback.
A failure of the world at run time (broker gone for good, disk full) raises
:class:`RuntimeFailure`: one line, exit 1.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


class EdgeavError(Exception):
    """Base of the errors edgeav reports as one line."""

    exit_code = EXIT_RUNTIME


class UserError(EdgeavError):
    """Bad input: a file, field or value the user can fix. Exit code 2."""

    exit_code = EXIT_USAGE


class RuntimeFailure(EdgeavError):
    """Something outside the user's input failed at run time. Exit code 1."""

    exit_code = EXIT_RUNTIME


def read_json_file(path: object, what: str) -> object:
    """Parse a JSON file, turning every way it can fail into one :class:`UserError` line naming it.

    ``what`` names the file's role in the messages ("labels file", "bundle manifest", ...).
    """
    import json
    from pathlib import Path

    p = Path(str(path))
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read {what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: {what} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
