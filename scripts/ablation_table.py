#!/usr/bin/env python3
"""Prints the ablation's tables (markdown) from the summary.json of each run under a folder: one line
per run, then one line per row (runs that differ only by a `-seedN` suffix), with the mean and the
spread (min–max) over its seeds. A DTM run's mode names its anchor (`[ssl.dtm] anchor`), read from the
summary's `ssl` (trainers from the eleventh session on) or else from the run's config.toml beside it
(the trainer's default is `unlabelled`).

    scripts/ablation_table.py training/campaign/results
"""
import json
import re
import statistics
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation")
runs = []
for summary in sorted(root.glob("*/summary.json")):
    s = json.loads(summary.read_text())
    s["name"] = summary.parent.name
    config = summary.parent / "config.toml"
    ssl = s.get("ssl")
    if not ssl and config.exists():
        ssl = tomllib.loads(config.read_text()).get("ssl", {})
    if s["mode"] == "dtm" and ssl is not None:
        anchor = ssl.get("dtm", {}).get("anchor", "unlabelled")
        s["mode"] = f"dtm, {anchor} anchor"
    runs.append(s)

print("| run | mode | seed | labelled | unlabelled | steps | best val macro-F1 | its val accuracy | best epoch | final mask rate | wall time |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for s in runs:
    last = s.get("last") or {}
    ssl = last.get("ssl")
    mask = f"{ssl['mask_rate']:.3f}" if ssl else "—"
    print(
        f"| {s['name']} | {s['mode']} | {s.get('seed', '?')} | {s['train_images']} | {s.get('unlabelled_images', 0)} "
        f"| {s['steps']} | {s['best_val_macro_f1']:.4f} | {s['best_val_accuracy']:.4f} "
        f"| {s['best_epoch']} | {mask} | {s['wall_seconds'] / 60:.1f} min |"
    )

rows = defaultdict(list)
for s in runs:
    rows[re.sub(r"-seed\d+$", "", s["name"])].append(s)


def spread(values, digits):
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


print()
print("| row | seeds | best val macro-F1, mean (min–max) | its val accuracy, mean (min–max) |")
print("|---|---|---|---|")
for name, group in rows.items():
    seeds = ", ".join(str(s.get("seed", "?")) for s in group)
    f1 = spread([s["best_val_macro_f1"] for s in group], 4)
    acc = spread([s["best_val_accuracy"] for s in group], 4)
    print(f"| {name} | {seeds} | {f1} | {acc} |")
