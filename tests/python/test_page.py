"""The page at `/` in a real browser: Debian's chromium, headless, driven through chromium-driver.
A photo is picked through the file input, and the webcam is a fake capture device playing a video
of two FER+ faces whose labels we know; the test reads the page's state (what it drew from the
server's answers) and keeps screenshots in target/page-test/ (look at them)."""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from conftest import ROOT, clear_faces

SHOTS = ROOT / "target/page-test"
PHOTO = ROOT / "../shared/images/group-photos/19.jpg"


def fake_camera_video(directory):
    """A 640x480 y4m video (what chromium's fake camera reads): a happy and a surprised face from
    FER+ validation (9-10 of 10 annotators agree), scaled to 176 px, side by side on grey."""
    faces = clear_faces(400)
    chosen = {}
    for png, label in faces:
        if label in ("happiness", "surprise") and label not in chosen:
            chosen[label] = png
    paths = []
    for label in ("happiness", "surprise"):
        path = Path(directory) / f"{label}.png"
        path.write_bytes(chosen[label])
        paths.append(path)
    video = Path(directory) / "camera.y4m"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "color=c=0x707070:s=640x480:r=10:d=3",
         "-i", str(paths[0]), "-i", str(paths[1]), "-filter_complex",
         "[1]scale=176:176[a];[2]scale=176:176[b];[0][a]overlay=72:152[t];[t][b]overlay=392:152,format=yuv420p",
         "-frames:v", "30", str(video)],
        check=True)
    return video


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver are needed (scripts/setup-system.sh)"
    with tempfile.TemporaryDirectory() as tmp:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                     f"--use-file-for-fake-video-capture={fake_camera_video(tmp)}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: Selenium Manager would otherwise try to download one.
        session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        try:
            yield session
        finally:
            session.quit()


def wait_for(browser, script, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {script}; page state: "
                         f"{browser.execute_script('return [document.body.dataset.state, window.fer.error]')}")


def test_a_photo_and_the_webcam_get_boxes_and_labels(addresses, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.get(f"http://{addresses['http']}/")
    assert "fer-server" in browser.title
    links = {a.get_attribute("href").rsplit("/", 1)[1] for a in browser.find_elements(By.CSS_SELECTOR, "nav a")}
    assert {"docs", "metrics"} <= links

    # A photo of five smiling people, picked through the file input.
    browser.find_element(By.ID, "file").send_keys(str(PHOTO.resolve()))
    wait_for(browser, "return document.body.dataset.state === 'done'")
    cards = browser.find_elements(By.CSS_SELECTOR, "#list .face")
    labels = [c.get_attribute("data-label") for c in cards]
    result = browser.execute_script("return window.fer.result")
    assert result["detector"] == "centerface"
    assert len(result["results"][0]["faces"]) == len(cards) == 5, labels
    assert labels.count("happiness") >= 4, labels
    assert browser.find_element(By.ID, "faces-count").text == "5"
    assert browser.find_element(By.ID, "server-ms").text.endswith("ms")
    browser.save_screenshot(str(SHOTS / "photo.png"))

    # The webcam: a fake camera showing a happy face (left) and a surprised one (right).
    browser.find_element(By.ID, "camera").click()
    wait_for(browser, "return window.fer.frames >= 6")
    faces = browser.execute_script("return window.fer.result.results[0].faces")
    assert len(faces) == 2, faces
    by_position = [f["label"] for f in sorted(faces, key=lambda f: f["box"]["x"])]
    assert by_position == ["happiness", "surprise"], by_position
    fps = wait_for(browser, "return window.fer.fps")
    assert fps > 0
    browser.save_screenshot(str(SHOTS / "webcam.png"))
    browser.find_element(By.ID, "camera").click()

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
