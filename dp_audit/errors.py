"""Errors that map to the CLI's documented exit codes (DESIGN.md §2).

Exit codes: 0 success / gate pass, 1 gate violation, 2 usage (bad arguments, config typo,
missing or malformed input, an output path that cannot be written), 3 integrity (hash mismatch,
corrupt artifact, edited manifest), 4 internal error (an exception dp-audit did not foresee: a bug;
the traceback goes to a log file). An unforeseen error never exits 1, the gate's "claim refuted".
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_INTERNAL = 4


class DPAuditError(Exception):
    """Base class: the message is shown to the user as one line, without a traceback."""

    exit_code = EXIT_USAGE


class UsageError(DPAuditError):
    """Bad arguments, an unknown config key, a missing input file, NaN scores."""

    exit_code = EXIT_USAGE


class IntegrityError(DPAuditError):
    """An artifact does not match its recorded hash, is missing, or cannot be parsed."""

    exit_code = EXIT_INTEGRITY
