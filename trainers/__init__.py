"""dp_audit.trainers (DESIGN.md §1). Import it as `dp_audit.trainers`, never under its bare folder name."""

if __name__ != "dp_audit.trainers":  # pragma: no cover - refuses a second copy under the bare name
    raise ImportError(f"import this package as 'dp_audit.trainers', not {__name__!r} (DESIGN.md §1)")
