"""The upload page (handler/page.py) in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium), against the session's real TorchServe: examples from
``examples/``, the verdict read from the DOM, the heatmap toggled, a text file refused, the history;
a clip made by ``video_clips`` with its timeline and frame heatmap, a corrupt clip refused.

A HEIC upload (shown through the page's preview) and files that declare their origin: the
provenance under the verdict, hostile metadata shown as text, the history filtered by it.

``DEEPFAKE_PAGE_SCREENSHOT=docs/page.png`` keeps the screenshot (docs/RECORDS.md shows one made that way)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from conftest import MODEL, ROOT
from postgres_server import free_port
from video_clips import corrupt, face_clip

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
REAL = ROOT / "examples/real/00003.jpg"
FAKE = ROOT / "examples/fake/00MZYXAT77.jpg"


@pytest.fixture(scope="module")
def page(torchserve, tmp_path_factory):
    """``python -m handler.page`` for the session's server, on a free loopback port."""
    port = free_port()
    log = tmp_path_factory.mktemp("page") / "page.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "handler.page", "--run-dir", str(torchserve.run_dir), "--port", str(port)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail(f"the page server did not start:\n{log.read_text()}")
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/install-system.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1100", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # the system driver: nothing downloaded
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(browser, timeout: float):
    """A wait that reads again when the page redraws what it was reading (the history table is
    rebuilt after every answer, so an element found a moment ago can be gone)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,))


def upload(browser, path: Path, timeout: float = 120):
    """Pick a file in the page's file input and wait for the page to answer (a verdict or an error)."""
    from selenium.webdriver.common.by import By

    browser.execute_script("document.getElementById('verdict').dataset.label = ''; document.getElementById('error').hidden = true;")
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait(browser, timeout).until(
        lambda d: d.find_element(By.ID, "verdict").get_attribute("data-label") or d.find_element(By.ID, "error").is_displayed()
    )


def test_page_verdicts_heatmap_refusal_and_history(page, browser, torchserve, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(page)
    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731

    for example in (REAL, FAKE):
        expected = torchserve.predict(MODEL, example.read_bytes(), headers={"Content-Type": "image/jpeg"}).json()
        upload(browser, example)
        assert not by_id("error").is_displayed(), by_id("error").text
        assert by_id("verdict").text.lower() == expected["label"], example
        assert by_id("band").get_attribute("data-band") == expected["band"] and by_id("band").text  # said in words
        assert float(by_id("probability").text) == pytest.approx(expected["fake_probability"], abs=1e-3)
        assert float(by_id("threshold").text) == pytest.approx(expected["threshold"], abs=1e-3)
        bar = by_id("bar-fill").size["width"] / by_id("bar").size["width"]
        assert bar == pytest.approx(expected["fake_probability"], abs=0.02)
        box = by_id("face-box")
        assert box.is_displayed() and box.size["width"] > 20 and box.size["height"] > 20
    assert by_id("verdict").get_attribute("data-label") == "fake"  # the README's fake example

    toggle, heatmap = by_id("heatmap-toggle"), by_id("heatmap")
    assert toggle.is_enabled() and not heatmap.is_displayed()
    toggle.click()
    assert heatmap.is_displayed()
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap) > 0
    # laid over the model's crop, which holds the face box
    crop, face = heatmap.rect, by_id("face-box").rect
    assert crop["x"] <= face["x"] + 1 and crop["y"] <= face["y"] + 1
    assert crop["x"] + crop["width"] >= face["x"] + face["width"] - 1 and crop["y"] + crop["height"] >= face["y"] + face["height"] - 1
    screenshot = tmp_path / "page.png"
    fake_digest = hashlib.sha256(FAKE.read_bytes()).hexdigest()
    wait(browser, 30).until(lambda d: fake_digest[:12] in d.find_element(By.CSS_SELECTOR, "#history tbody tr").text)
    # a reviewer agrees: the label goes to the records, the file to the labelled cases, the history shows it
    by_id("label-note").send_keys("GAN face: smooth skin, odd ear")
    by_id("label-fake").click()
    wait(browser, 30).until(lambda d: d.find_element(By.ID, "review-status").get_attribute("data-truth") == "fake")
    assert "the file is kept for training" in by_id("review-status").text
    assert (torchserve.run_dir / "labelled-cases" / f"{fake_digest}.jpg").read_bytes() == FAKE.read_bytes()
    wait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "#history tbody tr td.review").text.startswith("fake"))
    by_id("quality-refresh").click()
    wait(browser, 30).until(lambda d: MODEL in d.find_element(By.ID, "quality").text)
    assert by_id("drift").text.startswith(("Drift of P(fake)", "Drift not measured"))
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(screenshot))
    if os.environ.get("DEEPFAKE_PAGE_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["DEEPFAKE_PAGE_SCREENSHOT"])
    toggle.click()
    assert not heatmap.is_displayed()

    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not a photo\n")
    upload(browser, text_file)
    error = by_id("error")
    assert error.is_displayed() and error.get_attribute("data-code") == "not_an_image"
    assert "not an image" in error.text and not by_id("result").is_displayed()

    # the history shows the page's own requests, newest first: the refusal, then the fake example
    wait(browser, 30).until(lambda d: "415" in d.find_element(By.CSS_SELECTOR, "#history tbody tr").text)
    rows = wait(browser, 30).until(lambda d: [r.text for r in d.find_elements(By.CSS_SELECTOR, "#history tbody tr")])
    assert "not_an_image" in rows[0] and "fake" in rows[1]
    assert fake_digest[:12] in rows[1]
    csv_text = requests.get(by_id("csv").get_attribute("href"), timeout=30).text
    assert fake_digest in csv_text

    # REST predictions from elsewhere show up in the page's history too, ten to a page
    from handler.tsclient import probe_image

    probe = probe_image()
    for i in range(11):
        assert torchserve.predict(MODEL, probe + b"history-%d" % i, headers={"Content-Type": "image/png"}).status_code == 200
    newest = hashlib.sha256(probe + b"history-10").hexdigest()[:12]
    wait(browser, 30).until(lambda d: newest in d.find_element(By.CSS_SELECTOR, "#history tbody tr").text)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == 10
    by_id("next").click()
    wait(browser, 30).until(lambda d: d.find_element(By.ID, "page-info").text.startswith("page 2 of"))
    assert newest not in browser.find_element(By.CSS_SELECTOR, "#history tbody").text

    # the model server's keys stay on the server side
    sources = [browser.page_source] + [requests.get(f"{page}/static/{name}", timeout=10).text for name in ("page.js", "page.css")]
    for key in (torchserve.key("inference"), torchserve.key("management")):
        assert key and all(key not in source for source in sources)


@pytest.mark.parametrize("name, mime", [("dropped.jpg", "image/jpeg"), ("dropped.webm", "video/webm")])
def test_dropping_a_file_on_the_page(page, browser, torchserve, name, mime):
    """A drop event carrying the fake example or a WebM clip of the fake faces, as a drag from the
    desktop delivers it."""
    import base64

    from selenium.webdriver.common.by import By

    data = FAKE.read_bytes() if mime == "image/jpeg" else face_clip("webm", frames=4)
    browser.get(page)
    browser.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], arguments[1], { type: arguments[2] }));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));""",
        base64.b64encode(data).decode(), name, mime,
    )
    wait(browser, 120).until(lambda d: d.find_element(By.ID, "verdict").get_attribute("data-label"))
    expected = torchserve.predict(MODEL, data, headers={"Content-Type": mime}).json()
    assert browser.find_element(By.ID, "verdict").text.lower() == expected["label"]
    if mime == "image/jpeg":
        assert expected["label"] == "fake"
    else:
        assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline circle.point")) == expected["frames_sampled"] == 4


def test_heic_and_provenance_on_the_page(page, browser, torchserve, tmp_path):
    """A HEIC photo (which Chromium cannot draw: the page shows its server's JPEG preview) gets its
    verdict and face box; a C2PA-signed AI JPEG shows its claim under the verdict; a generator's
    PNG chunk, with markup in it, is shown as text; the history filters by what files declared."""
    from PIL import Image
    from provenance_files import SIGNER, c2pa_signed, encode, png_with_parameters
    from selenium.webdriver.common.by import By

    browser.get(page)
    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731
    fake = Image.open(FAKE)
    heic, signed = tmp_path / "face.heic", tmp_path / "signed.jpg"
    heic.write_bytes(encode(fake, "HEIF", quality=90))
    signed.write_bytes(c2pa_signed(FAKE.read_bytes()))
    expected = torchserve.predict(MODEL, heic.read_bytes(), headers={"Content-Type": "image/heic"}).json()
    upload(browser, heic)
    assert not by_id("error").is_displayed(), by_id("error").text
    assert by_id("verdict").text.lower() == expected["label"]
    assert browser.execute_script("return arguments[0].naturalWidth", by_id("photo")) > 0  # the preview is drawn
    box = by_id("face-box")
    assert box.is_displayed() and box.size["width"] > 20
    assert by_id("declared").get_attribute("data-declared") == "none"

    upload(browser, signed)
    plain = torchserve.predict(MODEL, FAKE.read_bytes(), headers={"Content-Type": "image/jpeg"}).json()
    assert by_id("verdict").text.lower() == plain["label"] == "fake"  # the claim does not move the verdict
    assert by_id("provenance").is_displayed() and by_id("declared").get_attribute("data-declared") == "ai_generated"
    assert "agrees with the model" in by_id("agreement").text
    c2pa = by_id("c2pa").text
    assert "manifest present, valid" in c2pa and SIGNER in c2pa and "only a claim" in c2pa and "trainedAlgorithmicMedia" in c2pa
    if os.environ.get("DEEPFAKE_PAGE_PROVENANCE_SCREENSHOT"):
        browser.save_screenshot(os.environ["DEEPFAKE_PAGE_PROVENANCE_SCREENSHOT"])

    markup = '<img src=x onerror="document.title=1">a face, Steps: 20'
    generated = tmp_path / "generated.png"
    generated.write_bytes(png_with_parameters(fake, markup))
    upload(browser, generated)
    assert by_id("declared").get_attribute("data-declared") == "ai_generated"
    cells = [td.text for td in by_id("metadata").find_elements(By.TAG_NAME, "td")]
    assert cells == ["text.parameters", markup]  # as text: no element was made from it
    assert not by_id("metadata").find_elements(By.TAG_NAME, "img") and browser.title != "1"

    digest = hashlib.sha256(signed.read_bytes()).hexdigest()[:12]
    wait(browser, 30).until(lambda d: digest in d.find_element(By.ID, "history").text)
    from selenium.webdriver.support.ui import Select

    Select(by_id("history-declared")).select_by_visible_text("ai_generated")
    wait(browser, 30).until(lambda d: "declared=ai_generated" in d.find_element(By.ID, "csv").get_attribute("href"))
    def filtered(driver):  # every row shown is one that declared AI generation
        rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#history tbody tr")]
        return rows if rows and all("ai_generated" in row for row in rows) else None

    assert any(digest in row for row in wait(browser, 30).until(filtered))
    listed = requests.get(f"{page}/api/history", params={"declared": "ai_generated", "per_page": 200}, timeout=30).json()["rows"]
    assert listed and {row["declared"] for row in listed} == {"ai_generated"}


def test_page_preview_uses_the_guarded_decoder(page):
    from PIL import Image
    from provenance_files import encode

    heic = encode(Image.open(FAKE), "HEIF", quality=80)
    preview = requests.post(f"{page}/api/preview", data=heic, timeout=60)
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(preview.content)).size == Image.open(FAKE).size
    refused = requests.post(f"{page}/api/preview", data=b"not a picture", timeout=60)
    assert refused.status_code == 415 and refused.json()["error"] == "not_an_image"


def test_page_server_refuses_oversized_bodies_and_bad_filters(page):
    response = requests.post(f"{page}/api/predict", data=b"\xff" * (16 * 1024 * 1024 + 1), headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert response.status_code == 413 and response.json()["error"] == "image_too_large"
    response = requests.get(f"{page}/api/history", params={"since": "last tuesday"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"] == "bad_filter"
    history = requests.get(f"{page}/api/history", params={"per_page": 2}, timeout=30).json()
    assert len(history["rows"]) <= 2 and history["total"] >= len(history["rows"])


@contextmanager
def page_of_a_gone_server(run_dir: Path, records_properties: dict | None = None):
    """``python -m handler.page`` for a run folder whose TorchServe is gone (its state file written
    here, with the records settings a server keeps there); yields the page's URL."""
    import json

    from handler.tsconfig import Ports

    state = {"pid": None, "model_store": str(run_dir), "models": {MODEL: f"{MODEL}.mar"}, "config": str(ROOT / "config.properties"),
             "ports": Ports.free().__dict__, "token_auth": False, "watchdog_pid": None, "records": records_properties or {}}  # fmt: skip
    (run_dir / "server.json").write_text(json.dumps(state))
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "handler.page", "--run-dir", str(run_dir), "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_page_says_so_when_the_model_server_is_down(tmp_path):
    """A run folder whose TorchServe is gone: the page still serves, and an upload gets a JSON 502."""
    with page_of_a_gone_server(tmp_path) as url:
        response = requests.post(f"{url}/api/predict", data=FAKE.read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert response.status_code == 502 and response.json()["error"] == "server_unavailable"
        assert requests.get(f"{url}/api/history", timeout=30).json()["total"] == 0


def test_history_says_so_while_the_records_store_is_down(tmp_path):
    """The history and its CSV from a PostgreSQL store that goes down and comes back: 503
    ``records_unavailable`` while it is down (JSON, or HTML for a browser), never a 500."""
    from postgres_server import PostgresServer, skip_reason

    if reason := skip_reason():
        pytest.skip(reason)
    postgres = PostgresServer().init()
    try:
        with page_of_a_gone_server(tmp_path, {"deepfake_records_url": postgres.url}) as url:
            assert requests.get(f"{url}/api/history", timeout=30).json()["total"] == 0
            postgres.kill()
            for path, accept, kind in [("/api/history", "application/json", "json"), ("/api/history.csv", "application/json", "json"),
                                       ("/api/history.csv", "text/html,application/xhtml+xml,*/*;q=0.8", "html")]:  # fmt: skip
                response = requests.get(url + path, headers={"Accept": accept}, timeout=60)
                assert response.status_code == 503, (path, response.status_code, response.text)
                if kind == "json":
                    assert response.json()["error"] == "records_unavailable" and "not answering" in response.json()["message"]
                else:
                    assert response.headers["content-type"].startswith("text/html") and "Records unavailable" in response.text
            postgres.start()
            assert requests.get(f"{url}/api/history.csv", timeout=60).text.startswith("id,created_at")
    finally:
        postgres.destroy()


def test_a_video_on_the_page(page, browser, torchserve, tmp_path):
    """A face clip: the verdict, the frame counts and one timeline point per sampled frame, as the REST
    answer has them; the preview; the most suspicious frame's heatmap on request; a corrupt clip refused."""
    from selenium.webdriver.common.by import By

    browser.get(page)
    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731
    clip = tmp_path / "faces.mp4"
    clip.write_bytes(face_clip("mp4", frames=6))
    expected = torchserve.predict(MODEL, clip.read_bytes(), headers={"Content-Type": "video/mp4"}).json()
    assert expected["media"] == "video" and expected["frames_sampled"] == 6

    upload(browser, clip)
    assert not by_id("error").is_displayed(), by_id("error").text
    assert by_id("verdict").text.lower() == expected["label"]
    assert float(by_id("probability").text) == pytest.approx(expected["fake_probability"], abs=1e-3)
    bar = by_id("bar-fill").size["width"] / by_id("bar").size["width"]
    assert bar == pytest.approx(expected["fake_probability"], abs=0.02)
    assert int(by_id("frames-sampled").text) == expected["frames_sampled"]
    assert int(by_id("frames-with-face").text) == expected["frames_with_face"]
    points = browser.find_elements(By.CSS_SELECTOR, "#timeline circle.point")
    assert len(points) == expected["frames_sampled"]
    assert [float(p.get_attribute("data-probability")) for p in points] == pytest.approx(
        [frame["fake_probability"] for frame in expected["timeline"]], abs=1e-6)
    # higher P(fake) is drawn higher, and the threshold line sits between 0 and 1
    heights = [float(p.get_attribute("cy")) for p in points]
    order = sorted(range(len(points)), key=lambda i: expected["timeline"][i]["fake_probability"])
    assert [heights[i] for i in order] == sorted(heights, reverse=True)
    assert by_id("clip").is_displayed() and not by_id("photo").is_displayed() and not by_id("face-box").is_displayed()
    assert by_id("clip").get_attribute("src").startswith("blob:")
    # the preview plays the uploaded clip itself, and a timeline point takes it to that frame's time
    wait(browser, 30).until(lambda d: d.execute_script("return arguments[0].readyState >= 1", by_id("clip")))
    duration = browser.execute_script("return arguments[0].duration", by_id("clip"))
    assert duration == pytest.approx(expected["video"]["duration_s"], abs=0.3)
    points[3].click()
    assert browser.execute_script("return arguments[0].currentTime", by_id("clip")) == pytest.approx(expected["timeline"][3]["time_s"], abs=0.01)

    toggle, frame_heatmap = by_id("heatmap-toggle"), by_id("frame-heatmap")
    assert toggle.is_enabled() and not frame_heatmap.is_displayed()
    toggle.click()
    assert frame_heatmap.is_displayed() and not by_id("heatmap").is_displayed()
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", by_id("frame-heatmap-image")) > 0
    explained = torchserve.explain(MODEL, clip.read_bytes(), headers={"Content-Type": "video/mp4"}).json()["explanation"]
    assert f"{explained['frame_time_s']:.2f} s" in by_id("frame-heatmap-caption").text
    marked = browser.find_elements(By.CSS_SELECTOR, "#timeline circle.explained")
    assert [float(p.get_attribute("data-time")) for p in marked] == [explained["frame_time_s"]]
    if os.environ.get("DEEPFAKE_PAGE_VIDEO_SCREENSHOT"):
        browser.save_screenshot(os.environ["DEEPFAKE_PAGE_VIDEO_SCREENSHOT"])

    digest = hashlib.sha256(clip.read_bytes()).hexdigest()[:12]
    wait(browser, 30).until(lambda d: digest in d.find_element(By.CSS_SELECTOR, "#history tbody tr").text)
    media = wait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#history tbody tr")[0].find_elements(By.TAG_NAME, "td")[1].text)
    assert media == "video"

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(corrupt(face_clip("mp4", frames=6)))
    upload(browser, broken)
    error = by_id("error")
    assert error.is_displayed() and error.get_attribute("data-code") == "corrupt_video"
    assert "The video is damaged or cut short." in error.text and not by_id("result").is_displayed()


def test_page_size_check_by_media():
    """Images keep 16 MiB; a video, told by its bytes, may go up to the handler's 64 MiB."""
    from handler.page import UploadLimits

    limits = UploadLimits()
    video_head, image_head = face_clip("mp4", frames=2)[:64], FAKE.read_bytes()[:64]
    assert limits.refusal(video_head, 20 * 2**20) is None
    assert limits.refusal(image_head, 16 * 2**20) is None
    too_big_image = limits.refusal(image_head, 16 * 2**20 + 1)
    assert too_big_image.status_code == 413 and b'"image_too_large"' in too_big_image.body
    too_big_video = limits.refusal(video_head, 64 * 2**20 + 1)
    assert too_big_video.status_code == 413 and b'"video_too_large"' in too_big_video.body
    # the same size with bytes that are no video: the image limit applies
    assert b'"image_too_large"' in limits.refusal(video_head[::-1], 20 * 2**20).body


def test_page_forwards_a_video_over_the_image_limit(page):
    """A 20 MiB MP4 (a face clip followed by a 20 MiB 'free' box, which players skip) passes the page
    and is answered by the handler."""
    clip = face_clip("mp4", frames=4)
    padding = 20 * 2**20
    body = clip + (padding + 8).to_bytes(4, "big") + b"free" + bytes(padding)
    response = requests.post(f"{page}/api/predict", data=body, headers={"Content-Type": "application/octet-stream"}, timeout=300)
    assert response.status_code == 200, response.text[:300]
    answer = response.json()
    assert answer["media"] == "video" and answer["frames_sampled"] == 4
    limits = requests.get(f"{page}/api/limits", timeout=30).json()
    assert limits == {"image_bytes": 16 * 2**20, "video_bytes": 64 * 2**20}


def test_page_labels_a_verdict_with_its_file_and_refuses_bad_labels(page, torchserve):
    """The label API as the page's script calls it: the verdict's request id from the answer's header,
    the file with it; refusals as a 4xx JSON reason; the history and quality read the label back."""
    from handler import labels, records_store

    body = REAL.read_bytes() + b"label-api"
    answer = requests.post(f"{page}/api/predict", data=body, headers={"Content-Type": "image/jpeg"}, timeout=120)
    request_id = answer.headers["x-request-id"]
    label = lambda truth, data=b"", **extra: requests.post(  # noqa: E731
        f"{page}/api/label", params={"request_id": request_id, "truth": truth, **extra}, data=data, timeout=30)
    refused = {
        "bad_truth": label("maybe", body),
        "file_mismatch": label("real", FAKE.read_bytes()),
        "unknown_request": requests.post(f"{page}/api/label", params={"request_id": "never-seen", "truth": "real"}, timeout=30),
        "too_long": label("real", note="n" * 1001),
    }
    assert {code: (r.status_code, r.json()["error"]) for code, r in refused.items()} == {
        "bad_truth": (400, "bad_truth"), "file_mismatch": (400, "file_mismatch"), "unknown_request": (404, "unknown_request"),
        "too_long": (400, "too_long")}  # fmt: skip
    assert all(r.json()["message"] for r in refused.values())
    first = label("fake", by="dana")
    kept = label("real", body, by="erin", note="my own photo")
    assert first.status_code == kept.status_code == 200 and kept.json()["kept"] == hashlib.sha256(body).hexdigest()
    assert (torchserve.run_dir / "labelled-cases" / f"{kept.json()['kept']}.jpg").read_bytes() == body
    engine = records_store.open_engine(torchserve.records_url)
    assert [(h["truth"], h["labelled_by"]) for h in labels.label_history(engine, request_id)] == [("fake", "dana"), ("real", "erin")]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the prediction's row arrives through the spool
        rows = requests.get(f"{page}/api/history", params={"per_page": 200}, timeout=30).json()["rows"]
        mine = [r for r in rows if r["request_id"] == request_id]
        if mine:
            break
        time.sleep(0.3)
    assert (mine[0]["truth"], mine[0]["labelled_by"]) == ("real", "erin")
    report = requests.get(f"{page}/api/quality", timeout=60).json()
    assert report["labelled"] >= 1 and {v["model"] for v in report["versions"]} == {MODEL}
    assert report["drift"]["psi"] is not None or "--reference-only" in report["drift"]["missing"]
    assert requests.get(f"{page}/api/quality", params={"since": "yesterday"}, timeout=30).status_code == 400


def test_a_picture_without_a_face_gets_no_verdict_on_the_page(page, browser, torchserve, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    flat = tmp_path / "flat.png"
    Image.new("RGB", (400, 300), (40, 90, 200)).save(flat)  # answered "fake" (0.50) before there was a band
    browser.get(page)
    upload(browser, flat)
    verdict, band = browser.find_element(By.ID, "verdict"), browser.find_element(By.ID, "band")
    assert verdict.get_attribute("data-label") == "no_face" and verdict.text.lower() == "no face found"
    assert band.get_attribute("data-band") == "no_face" and "no verdict" in band.text
    assert "no face" in browser.find_element(By.ID, "warning").text
