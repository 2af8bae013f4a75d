"""The run report: ``results.md`` and a self-contained ``report.html``.

The HTML holds the results table (method x student pivot and every row), one image grid per
distilled set (a row per class, up to ``per_class`` images), and the sweep's plot and table
when a sweep ran. Images are embedded as base64 PNGs (and also written next to the report),
so the one file can be mailed or attached to an issue.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.grids import paint_grid
from pipeline.core.write import MANIFEST, atomic_save_image, atomic_write_bytes


def set_grid(set_dir: str | os.PathLike, per_class: int = 10, cell: int = 48,
             max_classes: int = 20) -> Image.Image | None:
    """A grid of a distilled set: one row per class (label order), ``per_class`` images per row."""
    root = Path(set_dir)
    man = root / MANIFEST
    if man.is_file():
        entries = json.loads(man.read_text()).get("images", [])
        items = [(int(e.get("label", 0)), str(e.get("class_id")), root / e["file"]) for e in entries]
    else:
        items = []
        for i, cls in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
            items += [(i, cls, f) for f in sorted((root / cls).iterdir()) if f.suffix.lower() in (".png", ".jpg")]
    if not items:
        return None
    rows: dict[int, list[Path]] = {}
    for label, _cls, path in sorted(items, key=lambda t: (t[0], str(t[2]))):
        rows.setdefault(label, [])
        if len(rows[label]) < per_class:
            rows[label].append(path)
    labels = sorted(rows)[:max_classes]
    return paint_grid([rows[k] for k in labels], cell, margin=2, bad_tile=(255, 0, 0))  # unreadable: a red tile


def overview_image(grids: dict[str, Image.Image], rows: list[dict[str, Any]], gap: int = 12) -> Image.Image:
    """The report at a glance: each set's grid side by side, titled with its mean top-1 over students."""
    from PIL import ImageDraw

    means: dict[str, list[float]] = {}
    for r in rows:
        means.setdefault(str(r.get("method")), []).append(float(r.get("top1_mean", float("nan"))))
    title_h = 18
    width = sum(g.width for g in grids.values()) + gap * (len(grids) + 1)
    height = max(g.height for g in grids.values()) + title_h + 2 * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for name, grid in grids.items():
        acc = means.get(name)
        label = f"{name}: {np.mean(acc):.1f}%" if acc else name
        draw.text((x, gap // 2), label, fill=(0, 0, 0))
        canvas.paste(grid, (x, gap // 2 + title_h))
        x += grid.width + gap
    return canvas


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _pivot_html(rows: list[dict[str, Any]]) -> str:
    from tuning.evaluate import student_label

    students = sorted({student_label(r) for r in rows})
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["ipc"], r["method"]), {})[student_label(r)] = r
    head = "".join(f"<th>{html.escape(s)}</th>" for s in students)
    out = [f"<table><tr><th>dataset</th><th>IPC</th><th>method</th>{head}<th>mean</th></tr>"]
    for (ds, ipc, method), by in sorted(groups.items()):
        mean = np.mean([by[s]["top1_mean"] for s in by])
        cells = "".join(
            f"<td>{by[s]['top1_mean']:.2f} ± {by[s]['top1_std']:.2f}</td>" if s in by else "<td>-</td>"
            for s in students)
        out.append(f"<tr><td>{html.escape(str(ds))}</td><td>{ipc}</td><td><b>{html.escape(str(method))}</b></td>"
                   f"{cells}<td>{mean:.2f}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _rows_html(rows: list[dict[str, Any]]) -> str:
    from tuning.evaluate import student_label

    cols = ["dataset", "method", "ipc", "student", "protocol", "top1", "best", "repeats", "epochs", "seconds"]
    out = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["ipc"], r["method"], r["student"])):
        vals = [r["dataset"], r["method"], r["ipc"], student_label(r), r.get("protocol", ""),
                f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}", f"{r.get('best_mean', float('nan')):.2f}",
                r["repeats"], r.get("epochs", ""), r.get("seconds", "")]
        out.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in vals) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+3){text-align:left}.grids{display:flex;flex-wrap:wrap;gap:1.5em}
figure{margin:0}figcaption{font-weight:600;margin-bottom:.3em}.note{color:#555;font-size:.9em}"""


def write_report(out_dir: str | os.PathLike, rows: list[dict[str, Any]] | None = None,
                 sets: dict[str, str | os.PathLike] | None = None, sweep_dir: str | os.PathLike | None = None,
                 title: str = "semdistill report", notes: list[str] | None = None,
                 per_class: int = 10) -> dict[str, str]:
    """Write ``results.md`` and ``report.html`` into ``out_dir``; returns their paths.

    ``rows`` default to ``out_dir/results.json``; ``sets`` maps a method name to its
    distilled folder (one image grid each); ``sweep_dir`` holds ``sweep.png`` / ``sweep.md``.
    """
    from tuning.evaluate import results_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rows is None:
        path = out / "results.json"
        rows = json.loads(path.read_text()) if path.is_file() else []
    notes = list(notes or [])
    md = [f"# {title}", ""] + [f"- {n}" for n in notes] + ([""] if notes else []) + [results_markdown(rows)]
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
              f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>")]
    if notes:
        parts.append("<ul class='note'>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Cross-architecture top-1 on the real validation set (%)</h2>")
    if rows:
        parts.append("<p class='note'>Final accuracy after training each student from scratch on the set, "
                     "mean ± std over seeds; <i>mean</i> averages the students.</p>")
        parts.append(_pivot_html(rows))
        parts.append("<details><summary>every row</summary>" + _rows_html(rows) + "</details>")
    else:
        parts.append("<p>No evaluation results.</p>")
    if sets:
        parts.append("<h2>Distilled images (one row per class)</h2><div class='grids'>")
        grid_dir = out / "report_files"
        grids: dict[str, Image.Image] = {}
        for name, d in sets.items():
            grid = set_grid(d, per_class=per_class)
            if grid is None:
                continue
            grids[name] = grid
            atomic_save_image(grid_dir / f"grid_{name}.png", np.asarray(grid))
            parts.append(f"<figure><figcaption>{html.escape(name)}</figcaption>"
                         f"<img alt='{html.escape(name)}' src='data:image/png;base64,{_png_b64(grid)}'></figure>")
        parts.append("</div>")
        md.append("\nImage grids: " + ", ".join(f"`report_files/grid_{n}.png`" for n in grids) + "\n")
        if grids:  # one picture of every set with its mean accuracy (the README shows the demo's)
            atomic_save_image(grid_dir / "overview.png", np.asarray(overview_image(grids, rows)))
            md.append("Overview: `report_files/overview.png`\n")
    if sweep_dir is not None and Path(sweep_dir).is_dir():
        sd = Path(sweep_dir)
        parts.append("<h2>Sweep</h2>")
        if (sd / "sweep.png").is_file():
            with Image.open(sd / "sweep.png") as im:
                parts.append(f"<img alt='sweep' src='data:image/png;base64,{_png_b64(im.copy())}'>")
        if (sd / "best.json").is_file():
            best = json.loads((sd / "best.json").read_text())
            parts.append(f"<p>Best: <code>{html.escape(json.dumps(best.get('params')))}</code> -> mean top-1 "
                         f"{best.get('mean_top1', float('nan')):.2f}%</p>")
        if (sd / "sweep.md").is_file():
            md.append("\n" + (sd / "sweep.md").read_text().replace("# Sweep", "## Sweep"))
            parts.append("<pre>" + html.escape((sd / "sweep.md").read_text()) + "</pre>")
    parts.append("</body></html>")
    atomic_write_bytes(out / "results.md", "\n".join(md).encode())
    atomic_write_bytes(out / "report.html", "\n".join(parts).encode())
    return {"results_md": str(out / "results.md"), "report_html": str(out / "report.html")}
