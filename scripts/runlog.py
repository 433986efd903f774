#!/usr/bin/env python3
"""Prints the run-log cells of training/README.md for each run folder given: steps done, wall time,
and the evaluated epochs' "accuracy, macro-F1 (epoch)" with the best by macro-F1 in bold.

    scripts/runlog.py ~/fer-runs/campaign/fer2013-10pct-supervised ...
"""
import json
import sys
from pathlib import Path

for arg in sys.argv[1:]:
    run = Path(arg).expanduser()
    state = json.loads((run / "state.json").read_text())
    cells = []
    for h in state["history"]:
        val = h.get("val")
        if val is None:
            continue
        cell = f"{val['accuracy']:.4f}, {val['macro_f1']:.4f} ({h['epoch']})"
        cells.append(f"**{cell}**" if h["epoch"] == state["best_epoch"] else cell)
    status = "finished" if state["finished"] else "resumable"
    print(f"{run.name}: step {state['step']}, epoch {state['epoch']}, {status}, "
          f"wall {state['wall_seconds'] / 3600:.2f} h")
    print(" · ".join(cells))
