#!/usr/bin/env python3
"""Draws an ablation's validation curves, every run of it in one picture (SVG, no dependencies):
macro-F1 and accuracy per evaluated epoch, one colour per row (runs that differ only by a `-seedN`
suffix), one dash pattern per seed. Reads the run log of training/README.md, the record that
outlives the run folders, so runs whose folders are gone are drawn too.

    scripts/ablation_plot.py fer2013-10pct- training/campaign/ablation-a.svg "Ablation (a): ..."

The first argument picks the runs whose name starts with it; a run-log row whose first cell holds
more than the run's name (an earlier, lost attempt, e.g. "(μ = 2)") is left out. The third, optional,
is the title.
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "training" / "README.md"
CELL = re.compile(r"\*{0,2}(0\.\d+), (0\.\d+) \((\d+)\)\*{0,2}")
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
DASHES = ["", "7 4", "2 3", "10 3 2 3"]
# What a row's name (less the prefix) stands for.
ROWS = {
    "supervised": "supervised",
    "dtm": "DTM, unlabelled anchor",
    "dtm-labelled": "DTM, labelled anchor",
    "fixmatch": "FixMatch (τ = 0.95)",
    "flexmatch": "FlexMatch",
    "freematch": "FreeMatch",
}


def runs(prefix):
    """{run name: [(epoch, accuracy, macro-F1)]} from the run log's rows."""
    found = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not re.fullmatch(r"`[^`]+`", cells[0]):
            continue
        name = cells[0].strip("`")
        if not name.startswith(prefix):
            continue
        points = [(int(e), float(a), float(f)) for a, f, e in CELL.findall(cells[5])]
        if points:
            found[name] = points
    return found


def row_of(name):
    m = re.fullmatch(r"(.*)-seed(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, 42)


def panel(x0, y0, w, h, title, metric, series, lo, hi, epochs):
    """One chart: axes, grid, labels and a polyline per run."""
    out = [f'<text x="{x0 + w / 2}" y="{y0 - 12}" text-anchor="middle" font-size="15" font-weight="bold">{title}</text>',
           f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>']
    sx = lambda e: x0 + w * e / epochs
    sy = lambda v: y0 + h * (1 - (v - lo) / (hi - lo))
    step = 0.05
    v = (int(lo / step) + 1) * step
    while v < hi - 1e-9:
        out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="12">{v:.2f}</text>')
        v += step
    for e in range(0, epochs + 1, max(1, epochs // 10)):
        out.append(f'<line x1="{sx(e):.1f}" x2="{sx(e):.1f}" y1="{y0 + h}" y2="{y0 + h + 5}" stroke="#444"/>')
        out.append(f'<text x="{sx(e):.1f}" y="{y0 + h + 19}" text-anchor="middle" font-size="12">{e}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 38}" text-anchor="middle" font-size="13">epoch (of the labelled set)</text>')
    out.append(f'<text x="{x0 - 48}" y="{y0 + h / 2}" text-anchor="middle" font-size="13" '
               f'transform="rotate(-90 {x0 - 48} {y0 + h / 2})">validation {metric}</text>')
    for points, colour, dash in series:
        index = 2 if metric == "macro-F1" else 1
        path = " ".join(f"{sx(p[0]):.1f},{sy(p[index]):.1f}" for p in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
    return out


def main():
    prefix, target = sys.argv[1], Path(sys.argv[2])
    title = sys.argv[3] if len(sys.argv) > 3 else f"Ablation: {prefix.rstrip('-')}"
    found = runs(prefix)
    if not found:
        sys.exit(f"no run-log row starts with {prefix!r}")
    rows = defaultdict(list)
    for name in sorted(found):
        row, seed = row_of(name)
        rows[row].append((seed, name))
    # Supervised first, then the rows in the run log's order of names.
    order = sorted(rows, key=lambda r: (not r.endswith("supervised"), r))
    # The first seed of every row (42) draws solid lines.
    seeds = sorted({seed for r in rows.values() for seed, _ in r}, key=lambda s: (s != 42, s))
    series, legend = [], []
    for i, row in enumerate(order):
        colour = COLOURS[i % len(COLOURS)]
        for seed, name in sorted(rows[row], key=lambda r: seeds.index(r[0])):
            dash = DASHES[seeds.index(seed) % len(DASHES)]
            series.append((found[name], colour, dash))
            short = row.removeprefix(prefix)
            legend.append((f"{ROWS.get(short, short)}, seed {seed}", colour, dash))
    epochs = max(p[0] for pts in found.values() for p in pts)
    f1s = [p[2] for pts in found.values() for p in pts]
    accs = [p[1] for pts in found.values() for p in pts]
    # Axes on multiples of 0.05, with room above the highest point.
    lo_f, hi_f = int(min(f1s) * 20) / 20, (int((max(f1s) + 0.01) * 20) + 1) / 20
    lo_a, hi_a = int(min(accs) * 20) / 20, (int((max(accs) + 0.01) * 20) + 1) / 20
    width, height = 1200, 640
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="DejaVu Sans, Arial, sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="28" text-anchor="middle" font-size="18" font-weight="bold">'
           f'{title}</text>']
    svg += panel(90, 75, 470, 400, "Macro-F1 (selects the best epoch)", "macro-F1", series, lo_f, hi_f, epochs)
    svg += panel(690, 75, 470, 400, "Accuracy", "accuracy", series, lo_a, hi_a, epochs)
    for k, (label, colour, dash) in enumerate(legend):
        x, y = 90 + (k % 3) * 360, 540 + (k // 3) * 24
        svg.append(f'<line x1="{x}" x2="{x + 40}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2.5" stroke-dasharray="{dash}"/>')
        svg.append(f'<text x="{x + 48}" y="{y + 4}" font-size="13">{label}</text>')
    svg.append("</svg>")
    target.write_text("\n".join(svg) + "\n")
    print(f"{target}: {len(found)} runs in {len(rows)} rows")


main()
