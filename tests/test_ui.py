"""The Prefect UI in headless Chromium against the live server: the report, the champion, a refused batch's verdict
and the run form, at a laptop's width."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from live_server import _client, _run_filter

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("DIGITGEN_SCREENSHOT_DIR")  # a folder to keep this test's screenshots in


# Each table's right edge against the nearest edge that clips it (the window, or a box that hides or scrolls what
# overflows): a table the UI cuts off, or hides behind a scroll bar, is wider than what shows it.
CUT_OFF_TABLES = """() => [...document.querySelectorAll('table')].map(t => {
  let clip = document.documentElement.clientWidth;
  for (let el = t.parentElement; el; el = el.parentElement) {
    if (getComputedStyle(el).overflowX !== 'visible') clip = Math.min(clip, el.getBoundingClientRect().right);
  }
  return {right: Math.round(t.getBoundingClientRect().right), clip: Math.round(clip),
          head: t.innerText.split('\\n')[0].slice(0, 80)};
}).filter(t => t.right > t.clip + 1)"""


# The run form's fields: a dropdown (Prefect's p-select) or a type toggle (a button group: "str" / "None"), by name.
FORM_FIELDS = """() => [...document.querySelectorAll('.schema-form-property')].map(p => ({
  name: (p.querySelector('.schema-form-property__label')?.innerText || '').split(' ')[0],
  select: !!p.querySelector(':scope > .p-label__body .p-select'),
  toggles: [...p.querySelectorAll(':scope > .p-label__body > .p-button-group button')].map(b => b.innerText.trim()),
}))"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_the_prefect_ui(server, api_run, mnist, tmp_path):
    """The report, the champion, a refused batch's verdict and the run form, in Chromium at a laptop's width: every
    table whole on the page, and the run form's choices as dropdowns."""
    from batch_factory import new_handwriting, pick, write_batch
    from playwright.sync_api import sync_playwright
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.ingest import ingest_batch
    from tasks.batches import BatchRefusedError

    images, labels = pick(mnist.train_images, mnist.train_labels, 60, seed=5)
    refused = write_batch(tmp_path / "relabelled", new_handwriting(images, seed=5), (labels + 3) % 10)
    with pytest.raises(BatchRefusedError):  # its verdict table: the widest the UI shows
        ingest_batch(refused, data_root=server["data_root"], device="cpu", progress=False)
    with _client() as c:
        artifacts = c.read_artifacts(flow_run_filter=_run_filter(api_run.id))
        report = next(a for a in artifacts if a.key == "pipeline-report")
        (ingest,) = c.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-ingest"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    shots = [tmp_path] + ([Path(SCREENSHOTS)] if SCREENSHOTS else [])
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{server['url']}/runs/flow-run/{api_run.id}")
        page.get_by_text(api_run.name).first.wait_for(timeout=60_000)
        page.get_by_text("Completed").first.wait_for(timeout=60_000)
        for folder in shots:
            page.screenshot(path=str(folder / "ui-flow-run.png"))
        page.goto(f"{server['url']}/artifacts/artifact/{report.id}")
        page.locator("table").first.wait_for(timeout=60_000)
        page.locator('img[src^="data:image/png;base64,"]').first.wait_for(timeout=60_000)
        html = page.content()
        assert "Negative ELBO" in html and "Model gate" in html
        assert page.evaluate(CUT_OFF_TABLES) == [], "tables of the report cut off at 1400 pixels"
        assert page.locator('img[src^="data:image/png;base64,"]').count() >= 6
        for folder in shots:
            page.screenshot(path=str(folder / "ui-report.png"), full_page=False)

        # the champion: current record, the gate's decisions and their plot
        champion = next(a for a in artifacts if a.key == "champion")
        page.goto(f"{server['url']}/artifacts/artifact/{champion.id}")
        page.get_by_text("Champion: MNIST").first.wait_for(timeout=60_000)
        page.locator('img[src^="data:image/png;base64,"]').first.wait_for(timeout=60_000)
        assert "promoted" in page.content()
        assert page.evaluate(CUT_OFF_TABLES) == [], "the champion's table cut off at 1400 pixels"
        for folder in shots:
            page.screenshot(path=str(folder / "ui-champion.png"), full_page=False)

        # the typed run form: choices, defaults and descriptions from the config
        with _client() as c:
            retrain = c.read_deployment_by_name("digit-pipeline/retrain")
        page.goto(f"{server['url']}/deployments/deployment/{retrain.id}/run")
        page.get_by_text("training epochs for each model").first.wait_for(timeout=60_000)
        html = page.content()
        assert "weight of the KL term" in html and "the dataset" in html
        fields = {f["name"]: f for f in reversed(page.evaluate(FORM_FIELDS))}  # the outermost of a name wins
        for name in ("dataset", "preset", "arch", "binarize", "prior", "device", "precision", "task_runner"):
            assert fields[name]["select"] and not fields[name]["toggles"], (name, fields[name])
        assert all(all(fields[n]["toggles"]) for n in fields), "a type toggle without a label"
        arch = page.locator(".schema-form-property", has_text="arch (Optional)").locator(".p-select-button__control")
        arch.click()
        arch.press("ArrowDown")  # the dropdown opens: its choices, and unset
        page.get_by_role("option", name="conv", exact=True).wait_for(timeout=10_000)
        assert page.get_by_role("option").all_inner_texts() == ["mlp", "conv", "None"]
        for folder in shots:
            page.screenshot(path=str(folder / "ui-run-form-arch.png"), full_page=False)
        page.goto(f"{server['url']}/artifacts/artifact/{ingest.id}")
        page.locator("table").first.wait_for(timeout=60_000)
        assert "REFUSED" in page.content() and "relabelled" in page.content()
        assert page.evaluate(CUT_OFF_TABLES) == [], "the ingest verdict's tables cut off at 1400 pixels"
        for folder in shots:
            page.screenshot(path=str(folder / "ui-ingest.png"), full_page=True)
        for folder in shots:
            page.screenshot(path=str(folder / "ui-run-form.png"), full_page=False)
        browser.close()
    assert (tmp_path / "ui-report.png").stat().st_size > 10_000
