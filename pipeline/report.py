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
from pipeline.core.write import MANIFEST, atomic_save_image, atomic_write_bytes, read_manifest
from tuning.ddranking import differences, scores


def set_grid(set_dir: str | os.PathLike, per_class: int = 10, cell: int = 48,
             max_classes: int = 20) -> Image.Image | None:
    """A grid of a distilled set: one row per class (label order), ``per_class`` images per row."""
    root = Path(set_dir)
    man = root / MANIFEST
    if man.is_file():
        entries = read_manifest(root)["images"]
        items = [(int(e.get("label", 0)), str(e.get("class_id")), root / e["file"]) for e in entries]
    else:
        items = []
        for i, cls in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
            items += [(i, cls,
                       f) for f in sorted((root / cls).iterdir()) if f.suffix.lower() in (".png", ".jpg")]
    if not items:
        return None
    rows: dict[int, list[Path]] = {}
    for label, _cls, path in sorted(items, key=lambda t: (t[0], str(t[2]))):
        rows.setdefault(label, [])
        if len(rows[label]) < per_class:
            rows[label].append(path)
    labels = sorted(rows)[:max_classes]
    # unreadable: a red tile
    return paint_grid([rows[k] for k in labels], cell, margin=2, bad_tile=(255, 0, 0))


def overview_image(grids: dict[str, Image.Image], rows: list[dict[str, Any]], gap: int = 12) -> Image.Image:
    """The report at a glance: each set's grid side by side, titled with its mean top-1 over students."""
    # heavy: torch, pydantic, yaml (not loaded when this module is imported)
    from PIL import ImageDraw

    from tuning.evaluate import headline_rows, mean_top1

    by_method: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for r in headline_rows(rows):  # one preset and reported accuracy, never a mean across them
        by_method.setdefault(str(r.get("method")), {}).setdefault(int(r.get("ipc") or 0), []).append(r)
    means = {m: ", ".join(f"{mean_top1(rs):.1f}%" if len(by) == 1 else f"IPC {k} {mean_top1(rs):.1f}%"
                          for k, rs in sorted(by.items()))
             for m, by in by_method.items()}  # the unseen-architecture mean per IPC, as results.md
    lines = {name: [name, means.get(name, "")] for name in grids}
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # a column is as wide as its grid or its title, whichever is wider (IPC 1 grids are one image wide)
    widths = {name: max(g.width, *(int(measure.textlength(t)) + 2 for t in [*lines[name], "100.0%"]))
              for name, g in grids.items()}
    title_h = 32  # two lines: the set's name, its mean top-1
    width = sum(widths.values()) + gap * (len(grids) + 1)
    height = max(g.height for g in grids.values()) + title_h + 2 * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for name, grid in grids.items():
        draw.multiline_text((x, gap // 2), "\n".join(lines[name]), fill=(0, 0, 0), spacing=2)
        canvas.paste(grid, (x + (widths[name] - grid.width) // 2, gap // 2 + title_h))
        x += widths[name] + gap
    return canvas


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _pivot_html(rows: list[dict[str, Any]]) -> str:
    """Method x student table; *mean* is ``tuning.evaluate.mean_top1`` (the proxy, marked †, left out), as in
    results.md."""
    # heavy: torch, pydantic, yaml (not loaded when this module is imported)
    from tuning.evaluate import headline_cell, in_mean, student_label

    students = sorted({student_label(r) for r in rows}, key=lambda s: (not any(
        student_label(r) == s and not in_mean(r) for r in rows), s))
    proxies = {student_label(r) for r in rows if not in_mean(r)}
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["ipc"], r["method"]), {})[student_label(r)] = r
    head = "".join(f"<th>{html.escape(s)}{' †' if s in proxies else ''}</th>" for s in students)
    what = "mean over unseen architectures ± std over seeds" if proxies else "mean ± std over seeds"
    out = [f"<table class='pivot'><tr><th>dataset</th><th>IPC</th><th>method</th>{head}<th>{what}</th></tr>"]
    for (ds, ipc, method), by in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                        method_order(kv[0][2]))):
        mean = headline_cell(list(by.values()))
        cells = "".join(
            f"<td>{by[s]['top1_mean']:.2f} ± {by[s]['top1_std']:.2f}</td>" if s in by else "<td>-</td>"
            for s in students)
        out.append(f"<tr><td>{html.escape(str(ds))}</td><td>{ipc}</td><td><b>{html.escape(str(method))}</b></td>"
                   f"{cells}<td><b>{mean}</b></td></tr>")
    out.append("</table>")
    if proxies:
        out.append(f"<p class='note'>† {', '.join(sorted(proxies))}: the stage-1 proxy architecture, left "
                   "out of the mean (eval.exclude_from_mean).</p>")
    return "\n".join(out)


METHOD_ORDER = ("full_real", "random_real", "herding", "k_center", "dm", "diver_gamma0", "diver", "gm",
                "diver_gm", "edits_no_text", "edits")


def method_order(method: str) -> tuple[int, str]:
    """Table order: references and coresets first, then each stage-1 set (DM, a tensor input ``input_*``)
    before what recovers it."""
    key = "dm" if method.startswith("input_") else method
    return (METHOD_ORDER.index(key) if key in METHOD_ORDER else len(METHOD_ORDER), method)


def _ddranking_html(rows: list[dict[str, Any]]) -> str:
    """The DD-Ranking scores (tuning/ddranking.py) of every row that has its reference rows."""
    entries = scores(rows)
    if not entries:
        return ""
    out = [(f"<h3>DD-Ranking (x 100)</h3><p class='note'>HLR = full real - set (hard labels), IOR = set - "
            f"random real, LRS = label-robust score; ARS = augmentation-robust score (vs runs without "
            f"augmentation); mean ± std over seeds. {html.escape(differences(entries))}</p>"),
           ("<table class='ddranking'><tr><th>method</th><th>IPC</th><th>student</th><th>HLR</th><th>IOR</th>"
            "<th>LRS</th><th>ARS</th><th>seeds (LRS / ARS)</th><th>random real</th></tr>")]

    def cell(e: dict[str, Any], k: str) -> str:
        if k not in e:
            return "<td>-</td>"
        return f"<td>{e[k]:.2f}" + (f" ± {e[k + '_std']:.2f}" if f"{k}_std" in e else "") + "</td>"

    for e in sorted(entries, key=lambda e: (e["ipc"], method_order(e["method"]), e["student"])):
        cells = "".join(cell(e, k) for k in ("hlr", "ior", "lrs", "ars"))
        out.append(f"<tr><td>{html.escape(e['method'])}</td><td>{e['ipc']}</td><td>{html.escape(e['student'])}</td>"
                   f"{cells}<td>{e.get('n_lrs', '-')} / {e.get('n_ars', '-')}</td>"
                   f"<td>{html.escape(str(e.get('random_draws', '-')))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1")


def _error_bar(x: float, value: float, std: float, top: float, plot_h: float, half: float) -> str:
    """A whisker from ``value - std`` to ``value + std`` (percent, clipped to 0..100) with caps."""
    def y(v: float) -> float:
        return top + plot_h * (1 - max(0.0, min(v, 100.0)) / 100)

    lo, hi = y(value - std), y(value + std)
    return (f"<path class='err' d='M{x:.1f},{lo:.1f}V{hi:.1f}M{x - half:.1f},{lo:.1f}H{x + half:.1f}"
            f"M{x - half:.1f},{hi:.1f}H{x + half:.1f}' stroke='#222' fill='none'/>")


def bar_chart_svg(rows: list[dict[str, Any]], width: int = 900, height: int = 320) -> str:
    """Top-1 per architecture, one group of bars per method (per method and IPC when several IPCs ran: one
    IPC never hides another), each with its std over seeds as an error bar (an SVG document)."""
    # heavy: torch, pydantic, yaml (not loaded when this module is imported)
    from tuning.evaluate import student_label

    ipcs = {r.get("ipc") for r in rows}

    def name(r: dict[str, Any]) -> str:
        return str(r["method"]) + (f" IPC {r.get('ipc')}" if len(ipcs) > 1 else "")

    order = {name(r): (r.get("ipc") or 0, method_order(str(r["method"]))) for r in rows}
    methods = sorted(order, key=order.__getitem__)
    students = sorted({student_label(r) for r in rows})
    val = {(name(r), student_label(r)): float(r["top1_mean"]) for r in rows}
    err = {(name(r), student_label(r)): float(r.get("top1_std") or 0.0) for r in rows}
    left, bottom, top = 40, 60, 20
    plot_w, plot_h = width - left - 10, height - bottom - top
    group = plot_w / max(1, len(methods))
    bar = group * 0.8 / max(1, len(students))
    parts = [(f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
              f"font-family='sans-serif' font-size='11'><rect width='100%' height='100%' fill='white'/>")]
    for pct in range(0, 101, 20):
        y = top + plot_h * (1 - pct / 100)
        parts.append(f"<line x1='{left}' x2='{width - 10}' y1='{y:.1f}' y2='{y:.1f}' stroke='#ddd'/>"
                     f"<text x='{left - 4}' y='{y + 4:.1f}' text-anchor='end'>{pct}</text>")
    for i, m in enumerate(methods):
        x0 = left + i * group + group * 0.1
        for j, s in enumerate(students):
            v = val.get((m, s))
            if v is None:
                continue
            h = plot_h * max(0.0, min(v, 100.0)) / 100
            parts.append(f"<rect x='{x0 + j * bar:.1f}' y='{top + plot_h - h:.1f}' width='{bar - 1:.1f}' "
                         f"height='{h:.1f}' fill='{PALETTE[j % len(PALETTE)]}'><title>{html.escape(m)} / "
                         f"{html.escape(s)}: {v:.2f}% ± {err[(m, s)]:.2f} (std over seeds)</title></rect>")
            parts.append(_error_bar(x0 + j * bar + (bar - 1) / 2, v, err[(m, s)], top, plot_h, bar / 4))
        parts.append(f"<text x='{x0 + group * 0.4:.1f}' y='{top + plot_h + 14}' text-anchor='middle'>"
                     f"{html.escape(m)}</text>")
    for j, s in enumerate(students):
        x = left + j * 170
        parts.append(f"<rect x='{x}' y='{height - 22}' width='10' height='10' "
                     f"fill='{PALETTE[j % len(PALETTE)]}'/><text x='{x + 14}' "
                     f"y='{height - 13}'>{html.escape(s)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def edits_prototype_panel(edits_dir: str | os.PathLike, real_root: str | os.PathLike | None = None,
                          per_class: int = 1, cell: int = 48) -> list[tuple[Image.Image, str, str]]:
    """Per class (``per_class`` clusters each): the members behind the image prototype | the generated image,
    with its class and text prototype; from the EDITS manifest's ``members`` and ``prototype_text``."""
    root = Path(edits_dir)
    man = root / MANIFEST
    if not man.is_file():
        return []
    entries = read_manifest(root)["images"]
    seen: dict[str, int] = {}
    out = []
    for e in sorted(entries, key=lambda e: (int(e.get("label", 0)), e["key"])):
        cid = str(e.get("class_id"))
        if seen.get(cid, 0) >= per_class or "members" not in e:
            continue
        seen[cid] = seen.get(cid, 0) + 1
        members = [Path(m) if Path(m).is_absolute() or real_root is None else Path(real_root) / m
                   for m in e["members"]]
        tiles = members + [None, root / e["file"]]
        strip = paint_grid([tiles], cell, margin=2, bad_tile=(255, 0, 0))
        out.append((strip, cid, str(e.get("prototype_text", ""))))
    return out


def _protocol_html(rows: list[dict[str, Any]]) -> str:
    """The evaluation protocol of every preset in ``rows`` (``tuning.report_protocol``), one table each."""
    # start-up: pydantic, yaml (not loaded when this module is imported)
    from tuning.report_protocol import protocol_tables

    out = []
    for title, settings in protocol_tables(rows):
        out.append(f"<h2>Evaluation protocol, {html.escape(title)}</h2><table class='protocol'>")
        out += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in settings]
        out.append("</table>")
    return "\n".join(out)


def _rows_html(rows: list[dict[str, Any]]) -> str:
    # heavy: torch, pydantic, yaml (not loaded when this module is imported)
    from tuning.evaluate import student_label

    cols = ["dataset", "method", "ipc", "student", "preset", "protocol", "augment", "top1", "top-1 is",
            "best", "repeats", "epochs", "seconds"]
    out = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["ipc"], r["method"], r["student"])):
        vals = [r["dataset"], r["method"], r["ipc"], student_label(r), r.get("preset") or "",
                r.get("protocol", ""),
                r.get("augment", ""), f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}",
                r.get("reported", "final"),
                f"{r.get('best_mean', float('nan')):.2f}", r["repeats"], r.get("epochs", ""),
                r.get("seconds", "")]
        out.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in vals) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+3){text-align:left}.grids{display:flex;flex-wrap:wrap;gap:1.5em}
figure{margin:0}figcaption{font-weight:600;margin-bottom:.3em}.note{color:#555;font-size:.9em}
table.protos td,table.protocol td{text-align:left;vertical-align:middle}img{max-width:100%;height:auto}"""


def _panels_html(panels: dict[str, str | os.PathLike], edits_dir: str | os.PathLike | None) -> list[str]:
    """The pictures shown as they are, then the EDITS prototype table."""
    parts = []
    for caption, path in panels.items():
        if Path(path).is_file():
            with Image.open(path) as im:
                parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' "
                             f"src='data:image/png;base64,{_png_b64(im.convert('RGB'))}'>")
    strips = edits_prototype_panel(edits_dir) if edits_dir else []
    if strips:
        parts.append("<h2>EDITS: image prototype members | generated image, and the text prototype</h2>"
                     "<table class='protos'><tr><th>class</th><th>members | generated</th>"
                     "<th>text prototype</th></tr>")
        for strip, cid, text in strips:
            parts.append(f"<tr><td>{html.escape(cid)}</td><td><img alt='prototype {html.escape(cid)}' "
                         f"src='data:image/png;base64,{_png_b64(strip)}'></td><td>{html.escape(text)}</td></tr>")
        parts.append("</table>")
    return parts


def write_report(out_dir: str | os.PathLike, rows: list[dict[str, Any]] | None = None,
                 sets: dict[str, str | os.PathLike] | None = None, sweep_dir: str | os.PathLike | None = None,
                 title: str = "semdistill report", notes: list[str] | None = None,
                 per_class: int = 10, panels: dict[str, str | os.PathLike] | None = None,
                 edits_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Write ``results.md`` and ``report.html`` into ``out_dir``; returns their paths.

    ``rows`` default to ``out_dir/results.json``; ``sets`` maps a method name to its
    distilled folder (one image grid each); ``sweep_dir`` holds ``sweep.png`` / ``sweep.md``;
    ``panels`` maps a caption to a picture shown as it is (DIVER's input | output per class); ``edits_dir``
    (an EDITS set) adds, per class, the prototype's member images beside the generated image and its text.
    """
    # heavy: torch, pydantic, yaml (not loaded when this module is imported)
    from tuning.evaluate import headline_rows, ipc_label, results_markdown, table_groups
    from tuning.report_protocol import protocol_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rows is None:
        path = out / "results.json"
        rows = json.loads(path.read_text()) if path.is_file() else []
    notes = list(notes or [])
    if rows:  # the heading says the IPCs that ran
        title = f"{title}, {ipc_label(rows)}"
    md = ([f"# {title}", ""] + protocol_markdown(rows) + [f"- {n}" for n in notes] + ([""] if notes else [])
          + [results_markdown(rows, protocol=False)])
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
              f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>")]
    parts.append(_protocol_html(rows))
    if notes:
        parts.append("<ul class='note'>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Cross-architecture top-1 on the real validation set (%)</h2>")
    if rows:
        parts.append("<p class='note'>Each student trained from scratch on the set, tested on the real val "
                     "set; mean ± std over seeds (population std); the last column averages the students "
                     "outside eval.exclude_from_mean (all of them when none is left), as results.md does, "
                     "with the std of that mean over seeds.</p>")
        for group_title, group in table_groups(rows):
            if group_title:
                parts.append(f"<h3>{html.escape(group_title)}</h3>")
            shown = ", ".join(sorted({str(r.get("reported", "final")) for r in group}))
            parts.append(f"<p class='note'>Top-1 = {html.escape(shown)}.</p>")
            parts.append(_pivot_html(group))
        parts.append(_ddranking_html(rows))
        svg = bar_chart_svg(headline_rows(rows))
        atomic_write_bytes(out / "report_files" / "accuracy.svg", svg.encode())
        parts.append("<h3>Top-1 per architecture</h3><img class='chart' alt='accuracy per architecture' "
                     f"src='data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()}'>")
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
                         f"<img alt='{html.escape(name)}' "
                         f"src='data:image/png;base64,{_png_b64(grid)}'></figure>")
        parts.append("</div>")
        md.append("\nImage grids: " + ", ".join(f"`report_files/grid_{n}.png`" for n in grids) + "\n")
        if grids:  # one picture of every set with its mean accuracy (the README shows the demo's)
            atomic_save_image(grid_dir / "overview.png", np.asarray(overview_image(grids, rows)))
            md.append("Overview: `report_files/overview.png`\n")
    parts += _panels_html(panels or {}, edits_dir)
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
