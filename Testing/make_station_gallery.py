"""Screenshots of the reading station for ``docs/station/`` (run by hand, not by the tests).

    NODULE_MALIGNANCY_DATA=/work/shared/data .venv/bin/python Testing/make_station_gallery.py

Starts ``nodule-malignancy app --sample LIDC-IDRI-0001`` with the shipped ensemble on the CPU,
opens it in Debian's chromium, waits for the lungs in the 3D view (the CT's warm-up) and
saves: the page after a click on the readers' nodule (and
that click's time to the overlay), the axial view close up with each evidence scale, a click on
the chest wall (not assessed; ``toolbar-busy.png``: the toolbar before it and while it runs),
a click in the air (refused), the "Clear points" question and the 3D view (once the lungs the
CT's warm-up builds are in it), and the similar LIDC nodules opened (``similar.png``: the
drawer's block with the neighbours' thumbnails; they need the data folder;
``--similar-only`` takes the click and this one only). ``--out DIR`` writes elsewhere (e.g. the "before" pictures of an older checkout:
``--prefix before-`` with ``--root`` that checkout).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import station_page  # noqa: E402

NODULE_RAS = (-56.17, -86.2, -115.86)  # LIDC-IDRI-0001's readers' nodule
CHEST_WALL_RAS = (109.8, -4.1, -115.86)  # lateral chest wall muscle, 27 HU, same slice
AIR_RAS = (-14.0, 140.0, -115.86)  # in front of the chest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "station"))
    parser.add_argument("--prefix", default="")
    parser.add_argument("--root", default=str(HERE.parent), help="checkout to serve")
    parser.add_argument("--models", default=str(HERE.parent / "models"))
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--evidence-only", action="store_true", help="only the close-ups")
    parser.add_argument("--similar-only", action="store_true", help="only the similar LIDC nodules")
    parser.add_argument(
        "--click-at-once",
        action="store_true",
        help="click without waiting for the warm-up's lungs (the timing of an older station's)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    command = [
        sys.executable, "-m", "NoduleMalignancyLib.cli", "app", "--sample", "LIDC-IDRI-0001",
        "--port", str(args.port), "--models", args.models, "--device", "cpu",
    ]  # fmt: skip
    import os

    os.chdir(args.root)
    sys.path.insert(0, args.root)
    with station_page.station_in_chromium(command) as (browser, url):
        page, _ = station_page.open_page(browser, url, 1500, 950)
        shoot(page, args, out)
    return 0


def _save(page, out: Path, args, name: str, locator=None) -> None:
    path = out / f"{args.prefix}{name}.png"
    (locator or page).screenshot(path=str(path))
    print(f"wrote {path}")


def _wait_lungs(page, seconds: float = 90.0) -> None:
    """Until the 3D view has the lungs the CT's warm-up builds (a reader looks at the CT
    first; an older station has none)."""
    deadline = time.monotonic() + seconds
    while not station_page.snapshot(page)["layers"].get("lungs"):
        if time.monotonic() > deadline:
            print("no lungs in the 3D view (an older station?)")
            return
        page.wait_for_timeout(500)


def shoot(page, args, out: Path) -> None:
    if not args.click_at_once:
        _wait_lungs(page)
    x, y, where = station_page.locate(page, NODULE_RAS)
    page.mouse.move(x, y)
    before = station_page.view_image(page, where["box_id"])
    clicked = time.perf_counter()
    page.mouse.click(x, y)
    page.wait_for_function(
        f"() => !['ready', 'busy'].includes(({station_page.STATUS})())", timeout=300_000
    )
    print("status:", page.locator("#station-status").inner_text())
    station_page.wait_changed_near(page, where["box_id"], before, where["fx"], where["fy"])
    print(f"click to overlay {time.perf_counter() - clicked:.2f} s (shipped ensemble, CPU)")
    print("station log:", " | ".join(station_page.snapshot(page).get("log", [])[-3:]))
    page.mouse.move(1450, 940)  # off the views: no marker preview in the pictures
    page.wait_for_timeout(1500)
    if args.similar_only:
        similar(page, args, out)
        return
    _save(page, out, args, "nodule")
    # Close-ups of the axial view around the nodule, one per evidence overlay.
    select = page.locator("#station-overlays .v-select")
    for index, scale in enumerate(("combined", "fine", "medium", "coarse")):
        if index and select.count():
            select.click()
            page.locator(".v-overlay .v-list-item").nth(index).click()
            page.wait_for_timeout(2500)
        x, y, where = station_page.locate(page, NODULE_RAS)
        clip = {"x": x - 110, "y": y - 110, "width": 220, "height": 220}
        page.screenshot(path=str(out / f"{args.prefix}evidence-{scale}.png"), clip=clip)
        print(f"wrote {out / f'{args.prefix}evidence-{scale}.png'}")
    if args.evidence_only:
        return
    if select.count():
        select.click()
        page.locator(".v-overlay .v-list-item").nth(0).click()
    three_d = page.locator("#station-view-ThreeD")
    if three_d.count():
        _save(page, out, args, "3d", three_d)
    for name, ras, n in (("not-assessed", CHEST_WALL_RAS, 1), ("refused", AIR_RAS, 2)):
        x, y, _ = station_page.locate(page, ras)
        toolbar = page.locator("header").first
        idle = toolbar.screenshot() if n == 1 else None
        page.mouse.click(x, y)
        if idle is not None:  # the toolbar idle and while this analysis runs, one above the other
            page.wait_for_function(f"() => ({station_page.STATUS})() === 'busy'")
            _stacked(out / f"{args.prefix}toolbar-busy.png", idle, toolbar.screenshot())
            print(f"wrote {out / f'{args.prefix}toolbar-busy.png'}")
        station_page.wait_analyzed(page, n)
        page.mouse.move(1450, 940)
        page.wait_for_timeout(1500)
        _save(page, out, args, name)
    similar(page, args, out)
    if page.locator("#station-clear").count():
        page.locator("#station-clear").click()
        page.locator("#station-clear-dialog").wait_for()
        page.wait_for_timeout(500)
        _save(page, out, args, "clear-confirm")


def _stacked(path: Path, *pngs: bytes) -> None:
    """PNG images one above the other, a 6 px grey rule between them."""
    import io

    from PIL import Image

    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    width = max(i.width for i in images)
    out = Image.new("RGB", (width, sum(i.height + 6 for i in images) - 6), (128, 128, 128))
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height + 6
    out.save(path)


def similar(page, args, out: Path) -> None:
    """The clicked nodule's similar LIDC nodules, opened, with their thumbnails."""
    page.locator(".station-nodule").first.click()
    page.wait_for_timeout(1500)
    block = page.locator("#station-similar")
    if not block.count():
        print("no similar nodules (no index beside this ensemble, or not assessed)")
        return
    page.locator("#station-similar-title").click()
    try:
        page.wait_for_function(
            "() => { const i = document.querySelectorAll('.station-similar-thumbnail');"
            " return i.length > 0 && Array.from(i).every(x => x.naturalWidth > 0); }",
            timeout=30_000,
        )
    except Exception:  # no data folder: the text rows
        print("no thumbnails (is NODULE_MALIGNANCY_DATA set?)")
    page.wait_for_timeout(800)
    block.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    _save(page, out, args, "similar", block)


if __name__ == "__main__":
    sys.exit(main())
