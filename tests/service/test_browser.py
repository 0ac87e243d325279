"""The cashier page in headless Chromium (Debian's, driven by Playwright): upload a counter photo, wait for
the receipt, check that the boxes drawn and the total shown are the API's. `make test-browser`; needs
/usr/bin/chromium (scripts/install_browser.sh)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from src.recognition.gallery import Gallery
from tests.recognition.helpers import CATALOGUE, counter_photo, pixel_embedder, studio_entry, studio_shot
from tests.service.conftest import ADMIN_KEY, FAMILY_HEADS, SHOP, png

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.service.serve_fixture", "--dir", str(tmp_path / "gallery"),
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"service did not start: {proc.stdout.read().decode(errors='replace')[-2000:]}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _api_checkout(url: str, data: bytes) -> dict:
    boundary = "----testboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/checkout", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_cashier_page_shows_the_apis_receipt(server, tmp_path):
    if not os.path.exists(CHROMIUM):
        # CI sets REQUIRE_BROWSER=1 (as REQUIRE_MMDET): there a missing browser is a failure, not a skip.
        (pytest.fail if os.environ.get("REQUIRE_BROWSER") else pytest.skip)(
            f"{CHROMIUM} missing: run scripts/install_browser.sh")
    from playwright.sync_api import sync_playwright

    a, b, c = SHOP[1], SHOP[2], FAMILY_HEADS[7]  # c is not sold: an unknown box
    photo = tmp_path / "counter.png"
    photo.write_bytes(png(counter_photo([a, b, a, c], 4)[0]))
    api = _api_checkout(server, photo.read_bytes())
    assert len(api["detections"]) == 3 and len(api["unknown"]) == 1

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            page.wait_for_selector("#gallery-rows tr")  # the gallery list loaded
            assert "6 products" in page.inner_text("#gallery-summary")
            page.set_input_files("#photo", str(photo))
            page.wait_for_selector('#overlay[data-state="done"]', timeout=60_000)
            page.screenshot(path=str(tmp_path / "cashier_page.png"), full_page=True)

            assert page.inner_text("#total") == f"{api['total']:.2f}"
            lines = page.eval_on_selector_all("#receipt-lines tr", "rows => rows.map(r => [r.dataset.sku, "
                                              "r.children[1].textContent])")
            assert sorted(lines) == sorted([line["sku"], str(line["count"])] for line in api["items"])
            assert page.is_visible("#incomplete") and page.locator("#unknown li").count() == 1

            drawn = json.loads(page.get_attribute("#overlay", "data-boxes"))
            expected = [{"kind": "item", "sku": d["sku"], "box": d["box"]} for d in api["detections"]]
            expected += [{"kind": "unknown", "sku": None, "box": u["box"]} for u in api["unknown"]]
            assert drawn == expected
            # The boxes are on the canvas, not only in an attribute: a pixel on each box's left edge has the
            # box colour (green recognised, orange unknown), which the counter photo itself never has.
            scale = float(page.get_attribute("#overlay", "data-scale"))
            for d in drawn:
                x, y = d["box"][0] * scale, (d["box"][1] + d["box"][3]) / 2 * scale
                rgb = page.evaluate("([x, y]) => Array.from(document.getElementById('overlay').getContext('2d')"
                                    ".getImageData(Math.round(x), Math.round(y), 1, 1).data)", [x, y])
                assert (rgb[:3] == [0, 160, 0]) if d["kind"] == "item" else (rgb[:3] == [224, 112, 0]), (d, rgb)

            # Adding a product needs the admin key: refused without it, added with it (kept for this tab only).
            new_photo = tmp_path / "new.png"
            new_photo.write_bytes(png(studio_shot(c)))
            page.fill("#add-sku", "page-added")
            page.fill("#add-price", "4.2")
            page.set_input_files("#add-image", str(new_photo))
            page.click("#add-form button[type=submit]")
            page.wait_for_selector("#add-status.error")
            assert "admin key" in page.inner_text("#add-status")
            page.fill("#admin-key", ADMIN_KEY)
            page.dispatch_event("#admin-key", "change")
            page.click("#add-form button[type=submit]")
            page.wait_for_function("document.getElementById('add-status').textContent.startsWith('Added 1')")
            page.wait_for_function("document.getElementById('gallery-summary').textContent.startsWith('7 products')")
            assert page.evaluate("sessionStorage.getItem('recognition-admin-key')") == ADMIN_KEY
            history = json.loads(urllib.request.urlopen(server + "/gallery/history?limit=1", timeout=10).read())
            assert [(r["action"], r["sku"], r["new_price"], r["key_id"]) for r in history["items"]] == [
                ("add", "page-added", 4.2, "test-admin")]

            # b's look-alike sibling joins the gallery and a margin is set (b's crop: 0.999 vs 0.994; a's lead
            # is 0.21): b is listed as uncertain with both candidates, not priced; a and c (page-added) are priced.
            sibling = next(s for s in CATALOGUE if s.family_id == b.family_id and s.variant == 1)
            gallery = Gallery.open(tmp_path / "gallery", pixel_embedder(16))
            gallery.index.set_margin(0.05)
            gallery.add([studio_entry(sibling)])  # saved with the margin; the server follows from its next request
            api = _api_checkout(server, photo.read_bytes())
            assert [u["candidates"][0]["sku"] for u in api["uncertain"]] == [str(b.sku_id)]
            page.evaluate("document.getElementById('overlay').dataset.state = 'busy'")
            page.click("#checkout-btn")  # the same photo again
            page.wait_for_selector('#overlay[data-state="done"]', timeout=60_000)
            assert page.inner_text("#total") == f"{api['total']:.2f}" == f"{2 * a.price + 4.2:.2f}"  # + page-added
            assert page.locator("#uncertain li").count() == 1 and page.is_visible("#uncertain-block")
            assert json.loads(page.get_attribute("#uncertain li", "data-skus")) == [str(b.sku_id), str(sibling.sku_id)]
            kinds = [d["kind"] for d in json.loads(page.get_attribute("#overlay", "data-boxes"))]
            assert sorted(kinds) == ["item", "item", "item", "uncertain"]
            page.screenshot(path=str(tmp_path / "cashier_page_uncertain.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert (tmp_path / "cashier_page.png").stat().st_size > 10_000
