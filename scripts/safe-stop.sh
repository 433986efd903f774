#!/usr/bin/env bash
# Stops a background `fer-train train` run right after its next checkpoint, so that no step is lost:
# waits for the run folder's state.json to be rewritten (every `checkpoint_every` steps and at each
# epoch's end; writes are atomic, so a kill at any time is safe, only the steps since the last
# checkpoint are redone on resume), then kills the process that trains into that folder.
#   scripts/safe-stop.sh ~/fer-runs/campaign/fer2013-10pct-supervised [max-wait-seconds]
set -euo pipefail
run=$(realpath "$1")
max_wait=${2:-1800}
pid=$(pgrep -f -- "--run $run( |$)" | head -1 || true)
if [ -z "$pid" ]; then
    # The run may have been started with the folder as typed (~ expanded, not resolved).
    pid=$(pgrep -f -- "--run $1( |$)" | head -1 || true)
fi
[ -n "$pid" ] || { echo "no fer-train process trains into $run"; exit 1; }
before=$(stat -c %Y "$run/state.json" 2>/dev/null || echo 0)
for _ in $(seq "$max_wait"); do
    now=$(stat -c %Y "$run/state.json" 2>/dev/null || echo 0)
    if [ "$now" != "$before" ]; then
        kill "$pid"
        echo "stopped $pid after the checkpoint of $(date -d @"$now" +%T)"
        exit 0
    fi
    sleep 1
done
echo "no checkpoint within $max_wait s; $pid left running"
exit 1
