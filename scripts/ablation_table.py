#!/usr/bin/env python3
"""Prints the ablation's results table (markdown) from the summary.json of each run under a folder."""
import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation")
print("| row | mode | labelled | unlabelled | steps | best val macro-F1 | its val accuracy | best epoch | final mask rate | wall time |")
print("|---|---|---|---|---|---|---|---|---|---|")
for summary in sorted(root.glob("*/summary.json")):
    s = json.loads(summary.read_text())
    last = s.get("last") or {}
    ssl = last.get("ssl")
    mask = f"{ssl['mask_rate']:.3f}" if ssl else "—"
    print(
        f"| {summary.parent.name} | {s['mode']} | {s['train_images']} | {s.get('unlabelled_images', 0)} "
        f"| {s['steps']} | {s['best_val_macro_f1']:.4f} | {s['best_val_accuracy']:.4f} "
        f"| {s['best_epoch']} | {mask} | {s['wall_seconds'] / 60:.1f} min |"
    )
