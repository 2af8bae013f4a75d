"""report.html: the headline mean as results.md, DD-Ranking, the bar chart, DIVER's and EDITS's pictures."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.write import DistilledSetWriter
from pipeline.report import write_report


def _row(method, student, v, in_mean=True, augment="dsa", std=0.5):
    return {"dataset": "digits", "method": method, "ipc": 10, "student": student, "protocol": "hard",
            "augment": augment, "top1_mean": v, "top1_std": std, "repeats": 2, "best_mean": v,
            "student_kwargs": {}, "in_mean": in_mean}


ROWS = [_row("random_real", "convnet", 80.0, False), _row("random_real", "resnet18", 70.0),
        _row("random_real", "mobilenetv2", 60.0), _row("dm", "convnet", 75.0, False),
        _row("dm", "resnet18", 40.0),
        _row("dm", "mobilenetv2", 30.0), _row("full_real", "convnet", 95.0, False),
        _row("full_real", "resnet18", 90.0), _row("full_real", "mobilenetv2", 88.0)]


def _pivot_means(page: str) -> dict[str, str]:
    table = page.split("<table class='pivot'>")[1].split("</table>")[0]  # the first pivot
    return {m: mean for m, mean in re.findall(r"<b>([a-z_]+)</b></td>.*?<td><b>([\d.]+)</b></td></tr>",
                                              table)}


def test_pivot_mean_leaves_the_proxy_out_like_results_md(tmp_path):
    from tuning.evaluate import results_markdown

    page = write_report(tmp_path, ROWS) and (tmp_path / "report.html").read_text()
    # not 78.33 etc.
    assert _pivot_means(page) == {"full_real": "89.00", "random_real": "65.00", "dm": "35.00"}
    md = results_markdown(ROWS)
    assert "| digits | 10 | dm | 75.00 ± 0.50 | 30.00 ± 0.50 | 40.00 ± 0.50 | 35.00 |" in md  # the same 35.00
    assert "mean over unseen architectures" in page and "convnet †" in page


def test_ddranking_scores_and_the_bar_chart_are_in_the_report(tmp_path):
    from pipeline.report import bar_chart_svg
    from tuning.ddranking import label_robust_score

    page = (write_report(tmp_path, ROWS) and (tmp_path / "report.html").read_text())
    want = label_robust_score(90.0, 40.0, 40.0, 70.0)  # dm on resnet18: full 90, random 70
    table = page.split("<table class='ddranking'>")[1].split("</table>")[0]
    row = (f"<td>dm</td><td>10</td><td>resnet18</td><td>{want['hlr']:.2f}</td><td>{want['ior']:.2f}</td>"
           f"<td>{want['lrs']:.2f}</td>")
    assert row in table
    svg = bar_chart_svg(ROWS)
    assert svg.count("<title>") == len(ROWS)
    bars = dict(re.findall(r"height='([\d.]+)' fill='#[0-9a-f]+'><title>(\S+ / \S+):", svg)[i][::-1]
                for i in range(len(ROWS)))
    assert float(bars["dm / resnet18"]) == pytest.approx(0.40 * (320 - 60 - 20), abs=0.1)
    assert (tmp_path / "report_files" / "accuracy.svg").read_text() == svg


def _edits_set(root: Path, real: Path) -> Path:
    w = DistilledSetWriter(root, "edits")
    for c in range(3):
        members = []
        for k in range(5):
            p = real / str(c) / f"m{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(p)
            members.append(str(p))
        w.add(f"c{c}_k0", str(c), c, np.full((8, 8, 3), 200, np.uint8),
              {"members": members, "prototype_text": f"a handwritten digit {c}, thick strokes"}, flush=False)
    w.flush()
    return root


def test_edits_members_generated_image_and_text_and_diver_panel(tmp_path):
    edits = _edits_set(tmp_path / "edits", tmp_path / "real")
    panel = tmp_path / "side_by_side.png"
    Image.new("RGB", (60, 30), (0, 128, 0)).save(panel)
    write_report(tmp_path / "rep", ROWS, panels={"DIVER: input | recovered": panel}, edits_dir=edits)
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "a handwritten digit 2, thick strokes" in page and "DIVER: input | recovered" in page
    protos = page.split("<table class='protos'>")[1].split("</table>")[0]
    strips = re.findall(r"src='data:image/png;base64,([^']+)'", protos)
    assert len(strips) == 3
    strip = Image.open(io.BytesIO(base64.b64decode(strips[0])))
    cell, margin, pad = 48, 2, 2
    # 5 members, a gap, the generated image
    assert strip.size == (margin + 7 * (cell + pad), margin + cell + pad)
    px = np.asarray(strip)
    x = lambda col: margin + col * (cell + pad) + cell // 2
    assert tuple(px[margin + cell // 2, x(4)]) == (160, 0,
                                                   0) and tuple(px[margin + cell // 2, x(6)]) == (200,) * 3


def _images_load(html_path: Path, tmp: Path) -> dict:
    """Open the page in headless Chromium; an inline script reports every <img>'s natural size and the
    tables."""
    probe = tmp / "probe.html"
    script = ("<script>window.addEventListener('load',()=>{const r={imgs:[...document.images].map(i=>"
              "[i.naturalWidth,i.naturalHeight]),tables:document.querySelectorAll('table').length};"
              "const p=document.createElement('pre');p.id='probe';p.textContent=JSON.stringify(r);"
              "document.body.appendChild(p);});</script>")
    probe.write_text(html_path.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120,
                          check=True).stdout
    return json.loads(re.search(r"<pre id=\"probe\">(.*?)</pre>", dom).group(1))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="needs Debian's chromium (apt-get install chromium)")
def test_report_opens_in_headless_chromium(tmp_path):
    edits = _edits_set(tmp_path / "edits", tmp_path / "real")
    out = tmp_path / "rep"
    write_report(out, ROWS, sets={"edits": edits}, edits_dir=edits)
    got = _images_load(out / "report.html", tmp_path)
    assert len(got["imgs"]) >= 5 and all(w > 0 and h > 0 for w, h in got["imgs"]), got
    assert got["tables"] >= 3
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1400,3000", (out / "report.html").as_uri()], capture_output=True,
                    timeout=120,
                   check=True)
    px = np.asarray(Image.open(shot).convert("L"))
    assert px.std() > 5  # not a blank page
