"""The station's side-by-side comparison for ``docs/station/`` (run by hand, not by the tests).

    NODULE_MALIGNANCY_DATA=/work/shared/data .venv/bin/python Testing/make_prior_screenshot.py

Writes a SYNTHETIC prior of LIDC-IDRI-0001 (the CT under a known rigid map with noise,
``station_page.write_moved_prior``), starts ``nodule-malignancy app --ct CUR --prior PRIOR`` with
the shipped ensemble on the CPU, clicks the readers' nodule in the current CT's axial view and
saves the page (``prior-side-by-side.png``) once the nodule was looked for on the prior: the
prior's view follows the current one through the registration, the nodule list says what the
prior showed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import station_page  # noqa: E402
from make_station_gallery import NODULE_RAS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "station"))
    parser.add_argument("--models", default=str(HERE.parent / "models"))
    parser.add_argument("--port", type=int, default=8792)
    args = parser.parse_args(argv)

    from NoduleMalignancyLib.files.samples import sample_path

    current = sample_path("LIDC-IDRI-0001")
    prior = Path(tempfile.mkdtemp()) / "LIDC-IDRI-0001-synthetic-prior.nrrd"
    station_page.write_moved_prior(current, prior)
    command = [
        sys.executable, "-m", "NoduleMalignancyLib.cli", "app", "--ct", str(current),
        "--prior", str(prior), "--port", str(args.port), "--models", args.models,
        "--device", "cpu",
    ]  # fmt: skip
    with station_page.station_in_chromium(command) as (browser, url):
        page, _ = station_page.open_page(browser, url, 1500, 800, views=2)
        x, y, _ = station_page.locate(page, NODULE_RAS)
        page.mouse.click(x, y)
        station_page.wait_analyzed(page, 0, timeout_ms=300_000)
        page.locator(".station-nodule-prior").wait_for(timeout=300_000)  # found on the prior
        page.mouse.move(1450, 790)
        page.wait_for_timeout(2500)
        path = Path(args.out) / "prior-side-by-side.png"
        page.screenshot(path=str(path))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
