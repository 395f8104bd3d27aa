"""The web app's part 2 in a real headless Chromium against the real stack: log in, upload five
files (three valid, one not an image, one oversized) and see the two refusals at once, watch
the three valid ones reach an outcome through a real `imagetag stream`; as a reviewer correct
the one waiting in review; `imagetag retrain` then trains on a corpus that includes it.

The session's model tags the stream; the three valid images are chosen with it in-process
(two it tags, one it leaves below the threshold), so one surely waits in review. The retrain
runs on a copy of the model store (the session's stays as it is) over a 120-image folder plus
the archive. Also prints login and upload timings (20 of each, p50/p90)."""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from imagetag.bundle import ModelStore
from imagetag.datasets import FASHION_MNIST_LABELS, fashion_mnist_paths, read_idx
from imagetag.settings import Settings
from imagetag.tagging import tag_batch
from tests.e2e.conftest import (
    IMAGETAG,
    ROOT,
    StreamProcess,
    run_imagetag,
    settings_env,
    start_web,
    wait_until,
)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORD = "review-and-upload-42"
OUTCOMES = {"tagged", "review", "dead"}
RETRAIN_ARGS = ["--k", "16", "--trees", "10", "--levels", "1", "--sample-size", "5000"]

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (make setup installs them as root)",
)


def pick_images(model_store: str) -> tuple[list[tuple[bytes, str]], bytes, str]:
    """Two Fashion-MNIST test images the model tags and one it leaves in review (the last),
    with their labels; and the review one's bytes and label."""
    records = list(
        read_idx(*fashion_mnist_paths("test"), count=300, label_names=FASHION_MNIST_LABELS)
    )
    batch = pd.DataFrame(
        [
            {
                "id": hashlib.sha256(r.data).hexdigest(),
                "image": r.data,
                "content_type": "image/png",
                "source": "test://pick",
                "produced_at": int(time.time() * 1000),
                "label": None,
                "metadata": None,
            }
            for r in records
        ]
    )
    tagged, review, _ = tag_batch(batch, ModelStore(model_store).load(), threshold=0.4)
    assert len(tagged) >= 2 and len(review) >= 1, "the session model tags all or nothing"
    by_id = {hashlib.sha256(r.data).hexdigest(): (r.data, str(r.label)) for r in records}
    chosen = [by_id[i] for i in list(tagged["id"][:2])] + [by_id[review["id"].iloc[0]]]
    return chosen, chosen[2][0], chosen[2][1]


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def archived_label(archive: str, image_id: str) -> list[str]:
    if not Path(archive).is_dir() or not list(Path(archive).rglob("*.parquet")):
        return []
    try:  # a file Spark is still writing is skipped (read again on the next try)
        table = ds.dataset(archive, format="parquet", partitioning="hive").to_table(
            columns=["label"], filter=ds.field("id") == image_id
        )
    except (OSError, ValueError):
        return []
    return [v for v in table.column("label").to_pylist() if v]


def timings(url: str, user: str, data: list[bytes]) -> str:
    def token(session: requests.Session, path: str) -> str:
        page = session.get(url + path, timeout=30)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert match, page.text[:500]
        return match.group(1)

    logins, uploads = [], []
    for _ in range(20):
        session = requests.Session()
        csrf = token(session, "/login")
        started = time.monotonic()
        answer = session.post(
            url + "/login",
            data={"user": user, "password": PASSWORD, "csrf_token": csrf},
            allow_redirects=False,
            timeout=30,
        )
        logins.append((time.monotonic() - started) * 1000)
        assert answer.status_code == 302
    csrf = token(session, "/upload")
    for blob in data:
        started = time.monotonic()
        answer = session.post(
            url + "/upload",
            files={"images": ("t.png", blob, "image/png")},
            data={"csrf_token": csrf},
            timeout=60,
        )
        uploads.append((time.monotonic() - started) * 1000)
        assert answer.status_code == 200 and "/ingest/" in answer.text

    def line(name: str, values: list[float]) -> str:
        q = statistics.quantiles(values, n=10)
        return f"{name}: p50 {statistics.median(values):.1f} ms, p90 {q[8]:.1f} ms, max {max(values):.1f} ms"

    return line("20 logins", logins) + "\n" + line("20 one-file uploads", uploads)


def test_login_upload_status_review_correction_retrain_in_a_real_browser(
    stream_settings: Settings,
    model_store: str,
    stream_factory: Callable[..., StreamProcess],
    browser: WebDriver,
    tmp_path: Path,
) -> None:
    settings = stream_settings.derive(
        web={
            "port": 0,
            "users_file": str(tmp_path / "web" / "users.json"),
            "view_db": str(tmp_path / "web" / "view.sqlite"),
            "max_upload_bytes": 100_000,
        }
    )
    chosen, review_bytes, review_label = pick_images(model_store)
    review_id = hashlib.sha256(review_bytes).hexdigest()
    added = subprocess.run(
        [
            IMAGETAG,
            "web",
            "user",
            "add",
            "ann",
            "--role",
            "uploader",
            "--role",
            "reviewer",
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    assert PASSWORD not in (tmp_path / "web" / "users.json").read_text()

    stream = stream_factory(settings).start()
    web, url = start_web(settings, tmp_path / "web.log")
    try:
        driver, wait = browser, WebDriverWait(browser, 30)
        files = []
        for i, (data, _) in enumerate(chosen):
            files.append(tmp_path / f"valid-{i}.png")
            files[-1].write_bytes(data)
        (tmp_path / "notes.txt").write_text("not an image at all\n" * 20)
        noise = (np.random.default_rng(1).random((256, 256, 3)) * 255).astype(np.uint8)
        import cv2

        ok, big = cv2.imencode(".png", noise)
        assert ok and len(big) > 100_000
        (tmp_path / "big.png").write_bytes(big.tobytes())
        files += [tmp_path / "notes.txt", tmp_path / "big.png"]

        driver.get(url + "/upload")  # not logged in: to the login page, then back
        wait.until(lambda d: d.find_elements(By.ID, "login"))
        driver.find_element(By.ID, "user").send_keys("ann")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-submit").click()
        wait.until(lambda d: d.find_elements(By.ID, "upload-files"))
        driver.find_element(By.ID, "upload-files").send_keys("\n".join(str(f) for f in files))
        driver.find_element(By.ID, "upload-submit").click()
        wait.until(lambda d: d.find_elements(By.ID, "upload-results"))
        refused = {
            row.find_element(By.TAG_NAME, "td").text: row.find_element(By.CLASS_NAME, "reason").text
            for row in driver.find_elements(By.CSS_SELECTOR, "#upload-results tr.refused")
        }
        assert refused == {"notes.txt": "not_an_image", "big.png": "too_many_bytes"}
        sent = [
            r.get_attribute("data-id") for r in driver.find_elements(By.CSS_SELECTOR, "tr.sent")
        ]
        assert sent == [hashlib.sha256(d).hexdigest() for d, _ in chosen]

        # the page polls the JSON endpoint until each file has an outcome
        WebDriverWait(driver, 240, poll_frequency=1).until(
            lambda d: {e.text for e in d.find_elements(By.CSS_SELECTOR, "tr.sent .state")}
            <= OUTCOMES
        )
        states = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "tr.sent .state")]
        assert states == ["tagged", "tagged", "review"]
        driver.find_elements(By.CSS_SELECTOR, "tr.sent a.state-link")[0].click()
        wait.until(lambda d: d.find_element(By.ID, "state").text == "tagged")
        driver.find_element(By.LINK_TEXT, "its page").click()
        wait.until(lambda d: d.find_elements(By.ID, "image"))

        # the reviewer corrects the image waiting in review
        driver.get(url + "/review")
        item = f'li.item[data-id="{review_id}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, item))
        label = driver.find_element(By.CSS_SELECTOR, f"{item} input[name=label]")
        label.clear()
        label.send_keys(review_label)
        driver.find_element(By.CSS_SELECTOR, f"{item} button").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, item))
        wait_until(
            lambda: bool(
                (
                    requests.get(f"{url}/api/ingest/{review_id}", timeout=10).json()["correction"]
                    or {}
                ).get("resent")
            ),
            120,
            "the correction to be sent again",
        )
        wait_until(
            lambda: review_label in archived_label(settings.archive_dir, review_id),
            120,
            "the archive to hold the labelled copy",
        )
        print("\n" + timings(url, "ann", [_variant(chosen[0][0], i) for i in range(20)]))
    finally:
        web.terminate()
        web.wait(30)
        stream.stop()

    # retrain on a copy of the model store: a small folder plus the archive's labels
    store = str(tmp_path / "retrain-models")
    shutil.copytree(model_store, store)
    folder = tmp_path / "training"
    for i, r in enumerate(
        read_idx(*fashion_mnist_paths("train"), count=120, label_names=FASHION_MNIST_LABELS)
    ):
        (folder / str(r.label)).mkdir(parents=True, exist_ok=True)
        (folder / str(r.label) / f"{i}.png").write_bytes(r.data)
    retrain_settings = settings.derive(model_store=store)
    before = set(ModelStore(store).list_versions())
    result = run_imagetag(
        retrain_settings,
        "retrain",
        "--data",
        str(folder),
        "--retag",
        "none",
        "--force",
        *RETRAIN_ARGS,
        timeout_s=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(1 from the archive)" in result.stdout, result.stdout[-2000:]
    [version] = set(ModelStore(store).list_versions()) - before
    data = ModelStore(store).manifest(version)["data"]
    assert data["train"] + data["test"] == 121  # the folder's 120 + the corrected image
    with open(data["source"], newline="") as f:
        rows = [(path, label) for path, label in csv.reader(f)]
    assert [label for path, label in rows if path.endswith(f"/{review_id}.png")] == [review_label]
    print(f"retrained {version}: corpus {data['train']} train / {data['test']} test")


def _variant(png: bytes, i: int) -> bytes:
    """Another valid PNG per upload (distinct ids): the image with one pixel changed."""
    import cv2

    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert pixels is not None
    pixels[i % 28, (i * 7) % 28] = (int(pixels[i % 28, (i * 7) % 28]) + 128) % 256
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()
