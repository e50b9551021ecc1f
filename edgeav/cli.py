"""The one ``edgeav`` entry point.

Each subcommand lives in the module that implements it and registers itself
through a ``register(subparsers)`` function; this file only lists those modules
and turns :class:`~edgeav.errors.EdgeavError` into a one-line message and an exit
code (design.md section 6: 0 success, 1 runtime failure, 2 usage or bad input).
Commands that need the ``train`` extra import it inside their run function, so
``edgeav --help`` works on an edge box without torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from edgeav import __version__
from edgeav.errors import EXIT_USAGE, EdgeavError
from edgeav.log import redact, setup_logging

# Modules that define subcommands, in the order `edgeav --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "edgeav.config",
    "edgeav.synth.cli",
    "export.onnx_export",
    "edgeav.heads",
    "edgeav.calibrate",
    "edgeav.train_cli",
    "edgeav.replay",
    "edgeav.search",
    "edgeav.bench",
    "edgeav.live_bench",
    "edgeav.daemon",
    "edgeav.evaluate_cli",
)


# Commands whose start-up time counts (`edgeav bench` times a whole `edgeav replay` process against the
# decoding floor): invoked as such, only their own module is imported to build the parser. The others
# would bring in pydantic and yaml (edgeav.config) and more, ~0.1 s of CPU that replay never uses.
# Every other invocation, `edgeav --help` included, builds the full parser from COMMAND_MODULES.
FAST_COMMANDS: dict[str, str] = {"replay": "edgeav.replay"}

# The commands that run the pipeline (decoder, onnxruntime, deciders) get numpy's OpenBLAS with one thread.
# OpenBLAS starts a thread per core on the first matrix product and lets it spin-wait afterwards: on a
# 2-core box those threads took ~0.3 s of CPU from the video decoder in a 60 s replay (1.7 -> 1.4 s of CPU
# for the file's processing), for small products (the anomaly kNN per batch) one thread does as fast. Set
# before numpy is imported; a value the user exported wins. Training and evaluation keep the default.
PIPELINE_COMMANDS = frozenset({"replay", "run", "bench-live"})


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in the project's one-line form, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeav",
        description="Streaming edge audio-visual surveillance: learn what is normal, alert on what is not.",
    )
    parser.add_argument("--version", action="version", version=f"edgeav {__version__}")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                        help="log level (default: the config's, else info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _command_named(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, when it is plain to see (else None: the full parser decides)."""
    args = list(argv)
    while args and args[0].startswith("--log-level"):
        args = args[1 if "=" in args[0] else 2:]
    return args[0] if args and not args[0].startswith("-") else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_named(argv) or ""
    if command in PIPELINE_COMMANDS:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    fast = FAST_COMMANDS.get(command)
    parser = build_parser((fast,) if fast else COMMAND_MODULES)
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "info")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except EdgeavError as exc:
        sys.stderr.write(f"edgeav: error: {redact(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("edgeav: interrupted\n")
        return 130


def require_train_extra(command: str) -> None:
    """Fail with a one-line message when the ``train`` extra (torch) is not installed."""
    # Called only by the commands that run torch: importing it here costs nothing they would not pay anyway,
    # and it also catches an installation that is present but broken.
    try:
        importlib.import_module("torch")
    except ImportError:
        from edgeav.errors import UserError

        raise UserError(
            f"`edgeav {command}` needs the train extra (PyTorch): "
            "pip install torch==2.13.0 && pip install 'edgeav[train]'"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
