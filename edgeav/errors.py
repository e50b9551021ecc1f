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
