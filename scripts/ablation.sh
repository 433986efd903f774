#!/usr/bin/env bash
# Runs rows of the trainer's ablation (training/configs/ablation/*.toml) one after another, each
# resumable (run it again to continue a stopped row), then prints the results table.
#
#   scripts/ablation.sh                      # every row
#   scripts/ablation.sh fer2013-10pct-dtm    # one row (a config's file name without .toml)
#
# Runs go to runs/ablation/<row>/ (checkpoints, plots, summary.json), logs to runs/ablation/<row>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p fer-train
rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
    rows=(fer2013-10pct-supervised fer2013-10pct-fixmatch fer2013-10pct-flexmatch
          fer2013-10pct-freematch fer2013-10pct-dtm fer2013-full-supervised fer2013-full-dtm)
fi
mkdir -p runs/ablation
for row in "${rows[@]}"; do
    config="training/configs/ablation/$row.toml"
    [ -f "$config" ] || { echo "no such row: $config" >&2; exit 2; }
    echo "== $row"
    ./target/release/fer-train train --config "$config" --run "runs/ablation/$row" \
        2>&1 | tee -a "runs/ablation/$row.log" | grep -E '^(epoch|done)' || true
done
python3 scripts/ablation_table.py runs/ablation
