"""The batch review report (``nodule-malignancy report``): one self-contained HTML page per
``predict`` run, read back with ``html.parser`` as a reviewer's browser would see it."""

from __future__ import annotations

import base64
import csv
import io
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.batch.predict import mask_file_name
from NoduleMalignancyLib.batch.report_cli import build_rows
from NoduleMalignancyLib.core.nodule.attributes import wording
from NoduleMalignancyLib.core.result_schema import TEXT_SEPARATOR
from NoduleMalignancyLib.core.scope.validation import DESCRIPTIONS, REFUSALS, WARNINGS
from NoduleMalignancyLib.files.batch_report import (
    OUTLINE_RGB,
    THUMBNAIL_MM,
    THUMBNAIL_PIXELS,
    ReportHeader,
    ReportRow,
    render_report,
    thumbnail,
)

HOSTILE_ID = "<script>alert('x')&"
NUMBER_COLUMNS = (
    "malignancy_probability",
    "malignancy_score",
    "subtlety",
    "texture",
    "calcification_probability",
    "volume_mm3",
    "diameter_mm",
)


class _Page(HTMLParser):
    """Table rows (cells with data-v, text and image sources), every src/href, the scripts."""

    def __init__(self):
        super().__init__()
        self.columns: list[str] = []
        self.rows: list[list[dict]] = []
        self.links: list[str] = []
        self.scripts: list[str] = []
        self.tags: list[str] = []
        self._cell: dict | None = None
        self._in_body = self._in_script = self._in_code = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "th":
            self.columns.append(a.get("data-column", ""))
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._cell = {"v": a.get("data-v"), "text": "", "img": [], "code": []}
            self.rows[-1].append(self._cell)
        elif tag == "img" and self._cell is not None:
            self._cell["img"].append(a.get("src", ""))
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")
        if tag == "code" and self._cell is not None:
            self._cell["code"].append("")
            self._in_code = True

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "script":
            self._in_script = False
        elif tag == "code":
            self._in_code = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        if self._cell is not None:
            self._cell["text"] += data
            if self._in_code:
                self._cell["code"][-1] += data

    def cell(self, row: int, column: str) -> dict:
        return self.rows[row][self.columns.index(column)]


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _png(cell: dict) -> bytes:
    (src,) = cell["img"]
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return base64.b64decode(src[len(prefix) :], validate=True)


def _has_colour(png: bytes, rgb) -> bool:
    pixels = np.round(255 * matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3])
    return bool(np.all(pixels == np.asarray(rgb), axis=-1).any())


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tiny_dir, data_dir) -> dict:
    """3 LIDC VOIs (the first with a hostile id), a point in air, an unreadable image:
    ``predict --masks-dir`` with the tiny random ensemble, then ``report``."""
    d = tmp_path_factory.mktemp("batch_report")
    vois = data_dir / "lidc_vois"
    with open(vois / "metadata.csv", newline="") as f:
        meta = list(csv.DictReader(f))[:3]
    rows = [
        (
            HOSTILE_ID if k == 0 else f"{r['patient_id']}_{r['nodule_id']}",
            vois / "image" / f"{r['patient_id']}_R_{r['nodule_id']}.nii.gz",
            r["coordX"],
            r["coordY"],
            r["coordZ"],
        )
        for k, r in enumerate(meta)
    ]
    air = np.full((20, 40, 40), -1000, np.int16)
    air[:, :8, :8] = 40  # some tissue far from the point: a CT, but air at the point
    sitk.WriteImage(sitk.GetImageFromArray(air), str(d / "air.nii.gz"))
    (d / "broken.nii.gz").write_bytes(b"not an image")
    rows += [("air", d / "air.nii.gz", 30, 30, 10), ("broken", d / "broken.nii.gz", 0, 0, 0)]
    manifest = d / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("id", "image", "x", "y", "z"), *rows])
    predictions, masks, out = d / "predictions.csv", d / "masks", d / "report.html"
    common = ["--manifest", str(manifest), "--models", str(tiny_dir)]
    assert cli.main(["predict", *common, "--out", str(predictions), "--masks-dir", str(masks)]) == 0
    report = ["report", *common, "--predictions", str(predictions)]
    assert cli.main([*report, "--masks-dir", str(masks), "--out", str(out)]) == 0
    assert cli.main([*report, "--out", str(d / "no_masks.html")]) == 0
    with open(predictions, newline="") as f:
        csv_rows = list(csv.DictReader(f))
    return {
        "dir": d,
        "manifest": manifest,
        "predictions": predictions,
        "ids": [r[0] for r in rows],
        "csv": csv_rows,
        "html": out,
        "page": _parse(out),
        "no_masks": _parse(d / "no_masks.html"),
    }


def test_one_row_per_manifest_row_in_order(batch):
    page = batch["page"]
    assert [page.cell(i, "id")["v"] for i in range(len(page.rows))] == batch["ids"]
    assert [page.cell(i, "row")["v"] for i in range(len(page.rows))] == ["1", "2", "3", "4", "5"]
    assert [r["error"] == "" for r in batch["csv"]] == [True, True, True, False, False]


def test_thumbnails_are_embedded_pngs_of_the_expected_size(batch):
    page = batch["page"]
    for i in range(4):  # the VOIs and the point in air; the unreadable image has none
        assert _png_size(_png(page.cell(i, "thumbnail"))) == (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS)
    broken = page.cell(4, "thumbnail")
    assert broken["img"] == [] and "not readable" in broken["text"]


def test_the_outline_comes_from_the_mask(batch):
    with_masks, without = batch["page"], batch["no_masks"]
    for i in range(3):
        assert (batch["dir"] / "masks" / mask_file_name(batch["ids"][i])).is_file()
        assert _has_colour(_png(with_masks.cell(i, "thumbnail")), OUTLINE_RGB)
        assert not _has_colour(_png(without.cell(i, "thumbnail")), OUTLINE_RGB)
    assert not _has_colour(_png(with_masks.cell(3, "thumbnail")), OUTLINE_RGB)  # refused


def test_the_page_loads_nothing_from_outside(batch):
    page, text = batch["page"], batch["html"].read_text(encoding="utf-8")
    assert page.links and all(link.startswith("data:image/png;base64,") for link in page.links)
    assert "http://" not in text and "https://" not in text
    assert "link" not in page.tags and "iframe" not in page.tags
    assert "Content-Security-Policy" in text and "default-src 'none'" in text


def test_rows_that_were_not_scored_show_their_reason_and_no_numbers(batch):
    page = batch["page"]
    air, broken = page.cell(3, "error"), page.cell(4, "error")
    assert air["v"] == "no_tissue" and "no_tissue" in air["code"] and "refused" in air["text"]
    assert broken["v"] == "error" and "cannot read image" in broken["text"]
    for i in (3, 4):
        for column in NUMBER_COLUMNS:
            assert page.cell(i, column)["v"] == "" and page.cell(i, column)["text"].strip() == ""
        assert "%" not in "".join(c["text"] for c in page.rows[i])


def test_scored_rows_show_malignancy_with_spread_and_lidc_wording(batch):
    page = batch["page"]
    for i, row in enumerate(batch["csv"][:3]):
        p, sd = float(row["malignancy_probability"]), float(row["malignancy_sd"])
        cell = page.cell(i, "malignancy_probability")
        assert cell["text"].strip() == f"{100 * p:.1f} % ± {100 * sd:.1f} %"
        assert float(cell["v"]) == pytest.approx(p)
        margin = page.cell(i, "margin")["text"]
        assert wording("margin", float(row["margin"])) in margin
        assert f"{float(row['diameter_mm']):.1f} mm" in page.cell(i, "diameter_mm")["text"]


def test_the_warnings_column_holds_the_csv_codes_with_their_messages(batch):
    page = batch["page"]
    seen = set()
    for i, row in enumerate(batch["csv"][:3]):
        codes = [c for c in row["warnings"].split(";") if c]
        cell = page.cell(i, "warnings")
        assert cell["code"] == codes
        messages = row["warning_messages"].split(TEXT_SEPARATOR)
        assert len(messages) == len(codes)
        for message in messages:  # the CSV's own sentences, escaped
            assert " ".join(message.split()) in " ".join(cell["text"].split())
        seen.update(codes)
    assert seen, "the tiny random ensemble's leaking segmentations are flagged"


def test_text_from_the_csv_is_escaped(batch):
    text, page = batch["html"].read_text(encoding="utf-8"), batch["page"]
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&amp;" in text
    assert page.cell(0, "id")["text"].startswith(HOSTILE_ID)
    assert len(page.scripts) == 1  # only the sort script


def test_the_header_counts_the_batch_and_the_sort_script_is_inline(batch):
    text, page = batch["html"].read_text(encoding="utf-8"), batch["page"]
    counts = r"5 rows: <b>3 scored</b> \(3 with warnings, <b>0 not assessed</b>: .*?\), "
    assert re.search(counts + r"<b>1 refused</b>", text)
    assert "<b>1 failed</b>" in text and "custom" in text  # the models' version (not shipped)
    assert "addEventListener" in page.scripts[0] and "localeCompare" in page.scripts[0]
    assert 'data-column="malignancy_probability" data-sort="number"' in text


def test_ids_that_are_paths_name_files_inside_the_masks_folder(tmp_path, tiny_dir, data_dir):
    """Mask files are named by the id made file-name safe, in predict and in report alike: an
    id such as ``../x`` or ``a/b c`` neither escapes ``--masks-dir`` nor fails; an id with no
    safe character fails its own row only."""
    with open(data_dir / "lidc_vois" / "metadata.csv", newline="") as f:
        r = next(csv.DictReader(f))
    image = data_dir / "lidc_vois" / "image" / f"{r['patient_id']}_R_{r['nodule_id']}.nii.gz"
    ids = ["../x", "a/b c", "///"]
    manifest, run = tmp_path / "manifest.csv", tmp_path / "run"
    with open(manifest, "w", newline="") as f:
        point = (r["coordX"], r["coordY"], r["coordZ"])
        csv.writer(f).writerows(
            [("id", "image", "x", "y", "z"), *[(i, image, *point) for i in ids]]
        )
    predictions, masks, out = run / "p.csv", run / "masks", run / "report.html"
    common = ["--manifest", str(manifest), "--models", str(tiny_dir)]
    assert cli.main(["predict", *common, "--out", str(predictions), "--masks-dir", str(masks)]) == 0
    assert sorted(p.name for p in masks.iterdir()) == ["..-x.nii.gz", "a-b-c.nii.gz"]
    assert sorted(p.name for p in run.iterdir()) == ["masks", "p.csv"]  # nothing beside them
    with open(predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["id"] for row in rows] == ids
    assert [row["error"] for row in rows[:2]] == ["", ""]
    assert "no file-name-safe character" in rows[2]["error"]
    report = ["report", *common, "--predictions", str(predictions), "--masks-dir", str(masks)]
    assert cli.main([*report, "--out", str(out)]) == 0
    page = _parse(out)
    for i in range(2):
        assert _has_colour(_png(page.cell(i, "thumbnail")), OUTLINE_RGB)


def test_predictions_of_another_manifest_are_refused(batch, capsys):
    other = batch["dir"] / "other.csv"
    other.write_text("".join(batch["manifest"].read_text().splitlines(True)[:-1]))
    args = ["report", "--predictions", str(batch["predictions"]), "--manifest", str(other)]
    assert cli.main([*args, "--out", str(batch["dir"] / "x.html")]) == 2
    assert "not this manifest's" in capsys.readouterr().err
    assert not (batch["dir"] / "x.html").exists()


def test_every_scope_code_has_a_description():
    assert set(DESCRIPTIONS) == set(REFUSALS) | set(WARNINGS)


def test_the_outline_lands_on_the_nodule_in_a_flipped_image():
    """A sphere beside the point, in an image whose x axis runs right-to-left: the outline is
    centred where the sphere lies in LPS (radiological view: +x to the right of the thumbnail,
    +y downwards), whatever the voxel order."""
    size, spacing = 60, 0.8
    ct = np.full((30, size, size), -850, np.int16)
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((spacing, spacing, 1.0))
    image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    image.SetOrigin((40.0, -20.0, -15.0))
    centre = np.array([20.0, 4.0, 0.0])  # LPS mm: the sphere
    point = centre - np.array([6.0, -4.0, 0.0])  # so the sphere is 6 mm +x, 4 mm -y of it
    ijk = np.indices(ct.shape).reshape(3, -1).T[:, ::-1] * np.array([spacing, spacing, 1.0])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    world = np.array(image.GetOrigin()) + ijk @ direction.T
    sphere = (np.linalg.norm(world - centre, axis=1) <= 5.0).reshape(ct.shape).astype(np.uint8)
    mask = sitk.GetImageFromArray(sphere)
    mask.CopyInformation(image)
    rgb = thumbnail(image, point, mask)
    outline = np.argwhere(np.all(rgb == OUTLINE_RGB, axis=-1))
    per_mm = THUMBNAIL_PIXELS / THUMBNAIL_MM
    row, col = outline.mean(0)
    assert col == pytest.approx(THUMBNAIL_PIXELS / 2 + 6 * per_mm, abs=1.5)
    assert row == pytest.approx(THUMBNAIL_PIXELS / 2 - 4 * per_mm, abs=1.5)
    radius = np.hypot(outline[:, 0] - row, outline[:, 1] - col)
    assert np.median(radius) == pytest.approx(5 * per_mm, abs=1.5)


def test_a_header_click_sorts_the_rows_in_a_browser(batch):
    """Optional: the inline script in headless Chromium (skipped where it is not installed)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("no /usr/bin/chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"], headless=True
        )
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(batch["html"].as_uri())
        ids = "rs => rs.map(r => r.cells[1].dataset.v)"
        assert page.eval_on_selector_all("#nodules tbody tr", ids) == batch["ids"]
        probability = {r["id"]: float(r["malignancy_probability"] or "nan") for r in batch["csv"]}
        scored = sorted(batch["ids"][:3], key=probability.get)
        page.click("th[data-column=malignancy_probability]")
        up = page.eval_on_selector_all("#nodules tbody tr", ids)
        page.click("th[data-column=malignancy_probability]")
        down = page.eval_on_selector_all("#nodules tbody tr", ids)
        browser.close()
    assert up[:3] == scored and down[:3] == scored[::-1]
    assert set(up[3:]) == set(down[3:]) == {"air", "broken"}  # not scored: always last
    assert up != batch["ids"] or down != batch["ids"]
    assert errors == [] and all(u.startswith(("file:", "data:")) for u in requests)


def test_a_row_with_an_error_never_shows_numbers_even_if_the_csv_has_them():
    prediction = {"error": "no_tissue: air", "malignancy_probability": "0.91", "margin": "4.5"}
    page = render_report([ReportRow("a", "a.nii.gz", prediction)], ReportHeader())
    assert "91 %" not in page and "4.5" not in page and "Near sharp" not in page
    assert "<code>no_tissue</code> refused" in page


def test_a_point_outside_its_image_gets_a_note_instead_of_a_thumbnail(batch):
    image = str(batch["dir"] / "air.nii.gz")
    manifest = [{"id": "far", "image": image, "x": "0", "y": "0", "z": "5000"}]
    (row,) = build_rows(manifest, [{"id": "far", "error": "outside the volume"}])
    assert row.thumbnail_png is None and row.thumbnail_note == "point outside the image"


def test_each_image_is_read_once(batch, monkeypatch):
    import NoduleMalignancyLib.batch.report_cli as report_cli

    reads: list[str] = []
    real = report_cli.read_ct
    monkeypatch.setattr(report_cli, "read_ct", lambda path: reads.append(path) or real(path))
    image = str(batch["dir"] / "air.nii.gz")
    manifest = [{"id": f"p{k}", "image": image, "x": "30", "y": "30", "z": "10"} for k in range(3)]
    rows = build_rows(manifest, [{"id": m["id"], "error": ""} for m in manifest])
    assert reads == [image] and all(r.thumbnail_png for r in rows)


def test_ids_that_would_share_a_mask_file_stop_predict_before_any_work(tmp_path, tiny_dir, capsys):
    """``a/b`` and ``a_b`` would both write ``a_b.nii.gz`` (and a repeated id its own twice):
    the second mask would silently replace the first, so predict refuses the manifest."""
    manifest = tmp_path / "manifest.csv"
    rows = [
        ("id", "image", "x", "y", "z"),
        ("a b", "x.nii.gz", 0, 0, 0),
        ("a/b", "x.nii.gz", 0, 0, 0),
    ]
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    args = ["predict", "--manifest", str(manifest), "--models", str(tiny_dir)]
    out = tmp_path / "p.csv"
    assert cli.main([*args, "--out", str(out), "--masks-dir", str(tmp_path / "masks")]) == 2
    err = capsys.readouterr().err
    assert "a-b.nii.gz" in err and "'a b'" in err and "'a/b'" in err
    assert not out.exists() and not (tmp_path / "masks").exists()
    # Without masks there is nothing to overwrite: the rows are scored (here: the image is missing).
    assert cli.main([*args, "--out", str(out)]) == 1
