"""pipeline.report.overview_image: each set's grid under its own title, titles never running into each
other."""

from PIL import Image, ImageDraw

from pipeline.report import overview_image


def test_titles_of_one_image_wide_grids_do_not_overlap():
    grids = {name: Image.new("RGB", (8, 40), (0, 0, 0)) for name in ("random_real", "dm")}
    rows = [{"method": m, "ipc": 1, "student": "resnet18", "top1_mean": v, "top1_std": 0.0, "in_mean": True}
            for m, v in (("random_real", 63.46), ("dm", 81.9))]
    img = overview_image(grids, rows, gap=12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_width = int(measure.textlength("random_real")) + 2
    assert img.width >= title_width + int(measure.textlength("81.9%")) + 3 * 12
    # the second grid starts right of the first column, which is as wide as its title
    row = [img.getpixel((x, img.height - 12 - 20)) == (0, 0, 0) for x in range(img.width)]
    starts = [x for x in range(img.width) if row[x] and (x == 0 or not row[x - 1])]
    assert len(starts) == 2 and starts[1] >= 12 + title_width + 12
