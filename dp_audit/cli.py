"""The ``dp-audit`` command line (DESIGN.md §2).

Each subcommand lives in ``dp_audit/commands/<name>.py`` and exposes ``add_parser(subparsers)``
and ``run(args) -> int``. Errors derived from :class:`dp_audit.errors.DPAuditError` print one line
and exit with their code; argparse errors exit 2.

Exit codes: 0 ok/pass, 1 gate violation, 2 usage, 3 integrity.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from dp_audit import __version__
from dp_audit.errors import EXIT_USAGE, DPAuditError

COMMANDS = ("train", "run", "estimate", "gate", "report", "demo", "step_audit")

EPILOG = """exit codes: 0 success (gate: pass), 1 gate violation, 2 usage error, 3 integrity error
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
        print(f"dp-audit {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"dp-audit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
