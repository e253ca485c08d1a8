#!/usr/bin/env bash
# A sweep trained as solo runs and as fleets, from the same teachers and caches: wall times and
# whether the two results indexes agree (issue 12's cpu-small acceptance).
#
#   bash scripts/sweep_fleets_vs_solo.sh [CONFIG] [WORK] [MAX_FLEET]
#
# CONFIG defaults to configs/cpu-small.toml reduced to seed 0 (written into WORK); WORK to
# /tmp/sweep-fleets-vs-solo. The conversion, ladders and caches are built once (WORK/base), copied
# into WORK/solo and WORK/fleet without their runs, and each copy then trains every run: solo
# (--max-fleet 1) first, then fleets (--max-fleet MAX_FLEET, default 4), timed by the shell.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${2:-/tmp/sweep-fleets-vs-solo}"
max_fleet="${3:-4}"
mkdir -p "$work"
config="${1:-}"
if [ -z "$config" ]; then
  config="$work/cpu-small-seed0.toml"
  source_dir="$(cd ../shared/data/cifar-10-batches-bin && pwd)"
  sed -e 's#^seeds = \[0, 1, 2\]#seeds = [0]#' -e "s#^source = .*#source = \"$source_dir\"#" \
      -e 's#^name = "cpu-small"#name = "cpu-small-seed0"#' configs/cpu-small.toml > "$config"
fi
ft=".venv/bin/fasttarget"
"$ft" sweep "$config" --out "$work/base" --workers 2 --max-fleet 1
for mode in solo fleet; do
  rm -rf "${work:?}/$mode"
  cp -a "$work/base" "$work/$mode"
  rm -rf "$work/$mode/runs" "$work/$mode/fleets" "$work/$mode/results.sqlite" "$work/$mode/results.csv"
done
for mode in solo fleet; do
  fleet=1; [ "$mode" = fleet ] && fleet="$max_fleet"
  start=$(date +%s)
  "$ft" sweep "$config" --out "$work/$mode" --workers 2 --max-fleet "$fleet" > "$work/$mode.log" 2>&1
  echo "$mode (--max-fleet $fleet): $(( $(date +%s) - start )) s wall"
done
.venv/bin/python - "$work" <<'PY'
import csv, sys
rows = {m: {r["run_id"]: r for r in csv.DictReader(open(f"{sys.argv[1]}/{m}/results.csv"))} for m in ("solo", "fleet")}
cols = ("final_acc", "final_acc_g", "eval_steps", "eval_acc", "eval_images", "target_entropy", "agreement")
differ = [k for k in rows["solo"] if any(rows["solo"][k][c] != rows["fleet"][k][c] for c in cols)]
print(f"{len(rows['solo'])} runs; results differ in {len(differ)} runs {differ}")
PY
