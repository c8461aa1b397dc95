"""The sampler explorer in a real headless Chromium (Debian's, driven by Playwright) against a real `ddim serve` on
127.0.0.1: generate, compare, cancel, trajectory and invert; the page's images are the API's bytes. Screenshots
go to $DDIM_SCREENSHOTS when set (the README's come from `DDIM_SCREENSHOTS=docs/img pytest tests/test_explorer.py`)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import ServerProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt install chromium "
                                                                     "chromium-driver; .ci/run installs it)")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--models", "digits,digits-cond") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.url + "/")
    pg.wait_for_function("document.querySelectorAll('#gen-model option').length > 0")
    yield pg
    ctx.close()
    assert not errors, errors  # no script errors on the page


def shot(pg, name: str, tmp_path: Path) -> Path:
    """A screenshot that is not blank (many distinct colours, not one flat field)."""
    from PIL import Image

    folder = Path(os.environ.get("DDIM_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"explorer-{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    im = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert im.std() > 10 and len(np.unique(im)) > 20, f"{name}: the screenshot looks blank"
    return path


def srcs(root, selector: str) -> list[bytes]:
    """The PNG bytes of the data-URI images under `root` (the page or one of its elements)."""
    urls = root.eval_on_selector_all(selector, "els => els.map(e => e.src)")
    return [base64.b64decode(s.split(",", 1)[1]) for s in urls]


def api_json(server, job_id: str) -> dict:
    return httpx.get(f"{server.url}/v1/jobs/{job_id}/result?format=json", timeout=60).json()


def api_images(body: dict) -> list[bytes]:
    return [base64.b64decode(b) for b in body["images"]]


def test_generate_shows_the_apis_images_and_downloads(page, server, tmp_path):
    page.select_option("#gen-model", "digits")
    page.select_option("#gen-sampler", "ddim")
    page.fill("#gen-opt-eta", "0.5")
    page.fill("#gen-steps", "12")
    page.fill("#gen-n", "6")
    page.click("#gen-run")
    page.wait_for_function("document.querySelector('#gen-status').textContent.startsWith('done')", timeout=60000)
    job = page.get_attribute("#gen-images", "data-job")
    body = api_json(server, job)
    assert srcs(page, "#gen-images img") == api_images(body)
    assert body["provenance"]["plan"]["sampler"] == "ddim" and len(body["images"]) == 6
    assert page.get_attribute("#gen-preview", "src").startswith("data:image/png")
    npy = page.evaluate("async () => { const r = await fetch(document.querySelector('#gen-dl-npy').href); "
                        "return Array.from(new Uint8Array(await r.arrayBuffer())); }")
    api = httpx.get(f"{server.url}/v1/jobs/{job}/result?format=npy", timeout=60).content
    assert bytes(npy) == api
    assert "gen.sampler=ddim" in page.url and "gen.steps=12" in page.url
    shot(page, "generate", tmp_path)


def test_the_url_restores_the_form_and_errors_sit_by_their_field(page, server):
    page.goto(server.url + "/#view=generate&gen.model=digits-cond&gen.sampler=dpmpp_2m&gen.steps=5000")
    page.reload()
    page.wait_for_function("document.querySelector('#gen-sampler')?.value === 'dpmpp_2m'")
    assert page.input_value("#gen-steps") == "5000" and page.input_value("#gen-model") == "digits-cond"
    page.click("#gen-run")
    err = page.wait_for_selector(".error[data-error-for='steps']")
    assert "max_steps" in err.inner_text()
    # keyboard: the tabs are buttons; arrow keys move between views
    page.focus("#tab-generate")
    page.keyboard.press("ArrowRight")
    assert page.is_visible("#view-compare") and not page.is_visible("#view-generate")


def test_cancel_a_running_generation(page, server):
    page.select_option("#gen-model", "digits")
    page.fill("#gen-steps", "1000")
    page.fill("#gen-n", "8")
    page.click("#gen-run")
    page.wait_for_function("document.querySelector('#gen-progress').value > 2", timeout=60000)
    page.click("#gen-cancel")
    page.wait_for_function("document.querySelector('#gen-status').textContent.includes('cancelled')", timeout=60000)
    page.wait_for_function("!document.querySelector('#gen-run').disabled", timeout=60000)
    job = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 'ddim_jobs{status="cancelled"} 1' in job


def test_compare_two_configurations_on_the_same_seeds(page, server, tmp_path):
    page.click("#tab-compare")
    page.select_option("#cmp-model", "digits-cond")
    page.fill("#cmp-n", "6")
    page.fill("#cmp-classes", "3,7")
    page.select_option("#cmp0-sampler", "ddim")
    page.fill("#cmp0-steps", "10")
    page.select_option("#cmp1-sampler", "dpmpp_2m")
    page.fill("#cmp1-steps", "10")
    page.fill("#cmp1-scale", "3")
    page.click("#cmp-run")
    page.wait_for_function("document.querySelector('#cmp-status').textContent.startsWith('done')", timeout=120000)
    cols = page.query_selector_all("#cmp-results .column")
    assert len(cols) == 2
    for col, nfe in zip(cols, (10, 20)):  # guidance at scale 3 costs two network rows per step
        stats = col.query_selector(".stats").inner_text()
        assert f"{nfe} NFE" in stats and "FD" in stats and "class accuracy" in stats
        assert srcs(col, ".grid img") == api_images(api_json(server, col.get_attribute("data-job")))
    assert len(cols[1].query_selector_all("canvas.diff")) == 6
    assert "mean |difference|" in cols[1].query_selector(".meandiff").inner_text()
    shot(page, "compare", tmp_path)


def test_trajectory_scrubs_x_t_and_x0(page, server, tmp_path):
    page.click("#tab-trajectory")
    page.select_option("#traj-model", "digits")
    page.select_option("#traj-sampler", "ddim")
    page.fill("#traj-steps", "10")
    page.fill("#traj-n", "2")
    page.click("#traj-run")
    page.wait_for_function("!document.querySelector('#traj-step').disabled", timeout=60000)
    assert page.get_attribute("#traj-step", "max") == "10"
    last = page.get_attribute("#traj-xt", "src")
    page.fill("#traj-step", "2")
    page.dispatch_event("#traj-step", "input")
    assert page.get_attribute("#traj-xt", "src") != last and "step 2 of 10" in page.inner_text("#traj-step-label")
    shot(page, "trajectory", tmp_path)


def test_invert_a_real_digit_and_regenerate_it_as_another_class(page, server, tmp_path):
    from PIL import Image

    page.click("#tab-invert")
    page.select_option("#inv-model", "digits-cond")
    page.fill("#inv-index", "5")
    page.fill("#inv-steps", "20")
    page.click("#inv-run")
    page.wait_for_function("document.querySelector('#inv-status').textContent === 'done'", timeout=120000)
    assert "MSE" in page.inner_text("#inv-error")
    recon = srcs(page, "#inv-recon")[0]
    original = np.asarray(Image.open(io.BytesIO(srcs(page, "#inv-original")[0])), dtype=float)
    assert np.abs(np.asarray(Image.open(io.BytesIO(recon)), dtype=float) - original).mean() < 40  # it reconstructs
    page.fill("#inv-to", "3")
    page.click("#inv-edit")
    page.wait_for_function("document.querySelector('#inv-edit-status').textContent.startsWith('done')",
                           timeout=120000)
    assert page.get_attribute("#inv-edited", "src").startswith("data:image/png")
    shot(page, "invert", tmp_path)
    digit = tmp_path / "upload.png"  # an uploaded image: the same digit as a PNG file
    Image.fromarray(original.astype(np.uint8)).save(digit)
    page.set_input_files("#inv-file", str(digit))
    page.wait_for_function("document.querySelector('#inv-status').textContent === 'done'")
    page.evaluate("document.querySelector('#inv-status').textContent = ''")
    page.click("#inv-run")
    page.wait_for_function("document.querySelector('#inv-status').textContent === 'done'", timeout=120000)
    assert "MSE" in page.inner_text("#inv-error")
    uploaded = np.asarray(Image.open(io.BytesIO(srcs(page, "#inv-original")[0])), dtype=float)
    assert np.abs(uploaded - original).max() <= 1  # the page sent the file's pixels


def test_with_a_key_the_page_loads_and_asks_for_it(browser, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("page-key\n")
    with ServerProcess("--models", "digits", "--api-key-file", str(keys)) as srv:
        ctx = browser.new_context()
        pg = ctx.new_page()
        pg.goto(srv.url + "/")
        pg.wait_for_function("document.querySelector('#global-error').textContent.includes('authorization')")
        pg.fill("#api-key", "page-key")
        pg.dispatch_event("#api-key", "change")
        pg.wait_for_function("document.querySelectorAll('#gen-model option').length > 0")
        assert "page-key" not in pg.url
        ctx.close()
