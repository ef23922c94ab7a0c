"""dp-audit: empirical privacy audits of differentially private training.

The core package never imports torch at import time (DESIGN.md §1); trainers, attacks and
landscapes do, and are imported lazily by the CLI.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1

_LAZY = {"step_audit", "Construction", "StepAuditResult"}  # dp_audit.stepaudit, imported on first use


def __getattr__(name: str):
    if name in _LAZY:
        from dp_audit import stepaudit

        return getattr(stepaudit, name)
    raise AttributeError(f"module 'dp_audit' has no attribute {name!r}")


__all__ = ["__version__", "SCHEMA_VERSION", "step_audit", "Construction", "StepAuditResult"]
