#!/usr/bin/env bash
# Screenshots of an audit report for docs/images/: the HTML report (full page, headless
# Chromium, cut into parts) and the first pages of the PDF (pdftoppm). The report is rendered
# first into a temporary folder with `dp-audit report`; nothing is written into RUN_DIR.
#
#   scripts/screenshots.sh RUN_DIR [OUT_DIR=docs/images] [PREFIX=report]
#
# RUN_DIR with an audit.json: that run's report. A folder of runs (e.g. demo-run/, whose
# sub-folders hold audit.json): the comparison report of all of them.
# Needs chromium and poppler-utils (apt-get install -y chromium poppler-utils).
set -euo pipefail
run_dir=${1:?usage: scripts/screenshots.sh RUN_DIR [OUT_DIR] [PREFIX]}
out_dir=${2:-docs/images}
prefix=${3:-report}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
[ -x "$py" ] || py=python3
command -v chromium >/dev/null || { echo "chromium not found: apt-get install -y chromium" >&2; exit 2; }
command -v pdftoppm >/dev/null || { echo "pdftoppm not found: apt-get install -y poppler-utils" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out_dir"
runs=()
if [ -f "$run_dir/audit.json" ]; then
  runs=(--run "$run_dir")
else
  for a in "$run_dir"/*/audit.json; do [ -f "$a" ] && runs+=(--run "$(dirname "$a")"); done
  [ ${#runs[@]} -gt 0 ] || { echo "no audit.json in $run_dir or its sub-folders" >&2; exit 2; }
fi
"$py" -m dp_audit report "${runs[@]}" --format html,pdf --out "$tmp/report"

# A tall window, then the blank space below the page is trimmed.
chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$tmp/profile" --hide-scrollbars \
  --force-device-scale-factor=1 --window-size=1000,12000 \
  --screenshot="$tmp/full.png" "file://$tmp/report/report.html" >/dev/null 2>&1

# Trim, cut into parts of at most 1800 px, quantise to a small palette (each file ~100-250 KB).
"$py" - "$tmp/full.png" "$out_dir" "$prefix" <<'PY'
import sys
import numpy as np
from PIL import Image
src, out_dir, prefix = sys.argv[1:4]
img = Image.open(src).convert("RGB")
arr = np.asarray(img)
rows = np.where((arr < 250).any(axis=(1, 2)))[0]
bottom = min(arr.shape[0], int(rows.max()) + 30) if rows.size else arr.shape[0]
step = 1800
for i, start in enumerate(range(0, bottom, step)):
    part = img.crop((0, start, img.width, min(bottom, start + step)))
    path = f"{out_dir}/{prefix}-html-{i + 1}.png"
    part.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE).save(path, optimize=True)
    print(path, part.size)
PY
pdftoppm -png -r 60 -f 1 -l 3 "$tmp/report/report.pdf" "$out_dir/$prefix-pdf"
ls -l "$out_dir"/"$prefix"-*.png
