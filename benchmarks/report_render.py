"""How long rendering a report takes (target: well under 5 s for the demo, issue 8).

    .venv/bin/python benchmarks/report_render.py [RUN_DIR]      # default: the test fixture run

Prints the seconds of each stage measured in one process (view model, figures, each format, and
a full ``render_run``), and the full time as a fraction of the 5 s budget. Not a test.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "run_fixture"


def main() -> None:
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE
    t = time.perf_counter()
    from dp_audit.reports import FORMATS, render_run
    from dp_audit.reports.figures import report_figures
    from dp_audit.reports.viewmodel import build_view

    import_s = time.perf_counter() - t
    rows = [("import dp_audit.reports", import_s)]
    t = time.perf_counter()
    view = build_view(run)
    rows.append(("view model", time.perf_counter() - t))
    t = time.perf_counter()
    specs = report_figures(view)
    rows.append((f"draw {len(specs)} figures", time.perf_counter() - t))
    for name in FORMATS:
        t = time.perf_counter()
        FORMATS.get(name)(view, specs=specs)
        rows.append((f"format {name}", time.perf_counter() - t))
    t = time.perf_counter()
    FORMATS.get("pdf")(view, specs=specs, pdf_engine="matplotlib")
    rows.append(("format pdf (matplotlib fallback)", time.perf_counter() - t))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        render_run(run, out_dir=tmp)
        total = time.perf_counter() - t
    rows.append(("render_run, all formats", total))
    for what, sec in rows:
        print(f"{what:<36} {sec:7.3f} s")
    print(f"render_run / 5 s budget: {total / 5:.2f} (plus {import_s:.2f} s of imports in a fresh process)")


if __name__ == "__main__":
    main()
