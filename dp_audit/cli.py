"""The ``dp-audit`` command line (DESIGN.md §2).

Each subcommand lives in ``dp_audit/commands/<name>.py`` and exposes ``add_parser(subparsers)``
and ``run(args) -> int``. Errors derived from :class:`dp_audit.errors.DPAuditError` print one line
and exit with their code; argparse errors exit 2.

Exit codes: 0 ok/pass, 1 gate violation, 2 usage (including an input that cannot be read or decoded
and an output that cannot be written), 3 integrity, 4 internal error (traceback written to a log file
whose path is printed). Nothing but a refuted claim exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import errno
import os
import sys
import tempfile
import time
import traceback
from typing import Sequence

from dp_audit import __version__
from dp_audit.errors import EXIT_INTERNAL, EXIT_USAGE, DPAuditError
from dp_audit.safetext import one_line

COMMANDS = ("train", "run", "estimate", "gate", "report", "demo", "step_audit", "study")

EPILOG = """exit codes: 0 success (gate: pass), 1 gate violation, 2 usage error (bad argument, config or input,
            unwritable output), 3 integrity error, 4 internal error (a bug: traceback in a log file)
docs: README.md, docs/formats.md"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dp-audit",
        description="Empirical privacy audits of differentially private training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dp-audit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = _command_module(name)
        if module is not None:
            module.add_parser(sub)
    return parser


def _command_module(name: str):
    try:
        return importlib.import_module(f"dp_audit.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"dp_audit.commands.{name}":
            return None  # command not built yet
        raise


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DPAuditError as exc:
        print(f"dp-audit {args.command}: error: {one_line(exc, limit=2000)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"dp-audit {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the environment, not the audit: unreadable input, unwritable output
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__
        print(f"dp-audit {args.command}: error: {one_line(f'cannot access{where}: {reason}', limit=2000)}",
              file=sys.stderr)  # a path a user gave may hold a newline
        return EXIT_USAGE
    except UnicodeError as exc:
        print(f"dp-audit {args.command}: error: input is not valid UTF-8 text ({getattr(exc, 'reason', exc)})", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - an unforeseen error must never look like a verdict
        log = _write_traceback(args.command)
        print(f"dp-audit {args.command}: internal error: {type(exc).__name__}: {one_line(exc, limit=300)}"
              f" (traceback: {log}; please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _write_traceback(command: str) -> str:
    """Write the current exception's traceback to a fresh file in the temp dir; return its path."""
    try:
        fd, path = tempfile.mkstemp(prefix=f"dp-audit-{command}-{time.strftime('%Y%m%d-%H%M%S')}-",
                                    suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(traceback.format_exc())
        return path
    except OSError:
        return "unavailable (temp dir not writable)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
