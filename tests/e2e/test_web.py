"""The web app in a real headless Chromium (Debian's chromium + chromium-driver, through
Selenium) against the real stack: `imagetag web` as its own process over this test's own
collection, filled in-process (``tag_batch`` with the session's trained model, then the
project's Solr writer), so it costs seconds beyond the shared model.

Select a facet, move the slider and see the count drop, open an image, follow a similar
image, search by an uploaded example. Screenshots go to tests/e2e/screenshots/ (ignored)."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from imagetag.bundle import ModelStore
from imagetag.datasets import FASHION_MNIST_LABELS, fashion_mnist_paths, read_idx
from imagetag.documents import to_solr_doc
from imagetag.settings import Settings
from imagetag.solr import SolrWriter
from imagetag.tagging import tag_batch
from tests.e2e.conftest import ROOT, start_web

SCREENSHOTS = ROOT / "tests" / "e2e" / "screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
IMAGES = 240

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (make setup installs them as root)",
)


def near_copy(png: bytes) -> bytes:
    """The same garment with two pixels changed: another id, (nearly) the same pHash."""
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert pixels is not None
    pixels[0, 0] = 255 - pixels[0, 0]
    pixels[27, 27] = 255 - pixels[27, 27]
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


@pytest.fixture
def indexed(
    isolated_settings: Settings, model_store: str, tmp_path: Path
) -> tuple[Settings, pd.DataFrame]:
    """The test's collection holding IMAGES tagged Fashion-MNIST test images (+ a near copy
    of the first), tagged in-process as the stream tags them."""
    web = {"port": 0, "users_file": str(tmp_path / "users.json")}
    settings = isolated_settings.derive(
        model_store=model_store, web=web | {"view_db": str(tmp_path / "view.sqlite")}
    )
    records = read_idx(*fashion_mnist_paths("test"), count=IMAGES, label_names=FASHION_MNIST_LABELS)
    images = [(r.data, r.label) for r in records]
    images.append((near_copy(images[0][0]), images[0][1]))
    batch = pd.DataFrame(
        [
            {
                "id": hashlib.sha256(data).hexdigest(),
                "image": data,
                "content_type": "image/png",
                "source": f"test://fashion/{i}",
                "produced_at": int(time.time() * 1000),
                "label": label,
                "metadata": None,
            }
            for i, (data, label) in enumerate(images)
        ]
    )
    tagged, _, dead = tag_batch(batch, ModelStore(model_store).load(), threshold=0.4)
    assert len(dead) == 0 and len(tagged) > IMAGES // 2
    written = SolrWriter(settings).write(to_solr_doc(row) for row in tagged.to_dict("records"))
    assert written.accepted == len(tagged) and not written.rejected
    base = f"{settings.solr.url}/{settings.solr.collection}"
    requests.get(f"{base}/update", params={"commit": "true"}, timeout=60).raise_for_status()
    return settings, tagged


@pytest.fixture
def web(indexed: tuple[Settings, pd.DataFrame], tmp_path: Path) -> Iterator[str]:
    """`imagetag web` on a free port; yields its address (from its log line)."""
    settings, _ = indexed
    process, url = start_web(settings, tmp_path / "web.log")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def count(driver: WebDriver) -> int:
    return int(driver.find_element(By.ID, "count").text.replace(",", ""))


def test_search_slider_image_similar_and_example_in_a_real_browser(
    web: str, browser: WebDriver, indexed: tuple[Settings, pd.DataFrame], tmp_path: Path
) -> None:
    driver = browser
    wait = WebDriverWait(driver, 30)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    _, tagged = indexed
    driver.get(web + "/")
    total = count(driver)
    assert total == len(tagged)
    driver.save_screenshot(str(SCREENSHOTS / "search.png"))

    # select the facet of the tag with the most images voted for it below 0.8 (so the slider
    # has some to take away): the count becomes that facet's count
    unsure = Counter(
        tag for votes in tagged["votes"] for tag, v in dict(votes).items() if 0.4 <= v < 0.8
    )
    top = unsure.most_common(1)[0][0]
    box = driver.find_element(By.CSS_SELECTOR, f'#tag-facets input[value="{top}"]')
    facet_count = int(box.find_element(By.XPATH, "..").find_element(By.CLASS_NAME, "count").text)
    box.click()
    wait.until(ec.url_contains("tag="))
    assert count(driver) == facet_count < total
    assert driver.find_element(By.CSS_SELECTOR, f'#tag-facets input[value="{top}"]').is_selected()

    # drag the slider to the right: fewer images have that many votes for the tag
    before = count(driver)
    slider = driver.find_element(By.ID, "min")
    width = slider.size["width"]
    # pressed at its middle (0.70), let go a quarter further right (about 0.85)
    ActionChains(driver).click_and_hold(slider).move_by_offset(width // 4, 0).release().perform()
    wait.until(ec.url_contains("min="))
    moved_at = re.search(r"min=([0-9.]+)", driver.current_url)
    assert moved_at is not None
    moved = float(moved_at.group(1))
    after = count(driver)
    assert moved > 0.8 and after < before
    expected = sum(dict(votes).get(top, 0) >= moved - 1e-6 for votes in tagged["votes"])
    assert after == expected
    driver.save_screenshot(str(SCREENSHOTS / "search-slider.png"))

    # open the first image, then follow its first similar image
    first = driver.find_element(By.CSS_SELECTOR, ".grid .tile a")
    first_id = first.get_attribute("data-id")
    first.click()
    wait.until(ec.presence_of_element_located((By.ID, "image")))
    assert driver.find_element(By.ID, "image").get_attribute("data-id") == first_id
    assert driver.find_elements(By.CSS_SELECTOR, "svg.votes rect.bar")
    driver.save_screenshot(str(SCREENSHOTS / "image.png"))
    similar = driver.find_element(By.CSS_SELECTOR, "#similar .tile a")
    similar_id = similar.get_attribute("data-id")
    assert similar_id != first_id
    similar.click()
    wait.until(lambda d: d.find_element(By.ID, "image").get_attribute("data-id") == similar_id)

    # the near copy of the first test image is its near-duplicate
    original = hashlib.sha256(
        next(iter(read_idx(*fashion_mnist_paths("test"), count=1))).data
    ).hexdigest()
    if original in set(tagged["id"]):
        driver.get(f"{web}/image/{original}")
        near = driver.find_elements(By.CSS_SELECTOR, "#near .tile a")
        assert near, "the near copy is not shown as a near-duplicate"

    # search by an uploaded example: predicted tags and the nearest indexed images
    example = tmp_path / "example.png"
    record = next(
        iter(
            read_idx(
                *fashion_mnist_paths("test"),
                start=IMAGES + 10,
                count=1,
                label_names=FASHION_MNIST_LABELS,
            )
        )
    )
    example.write_bytes(record.data)
    driver.get(web + "/")
    driver.find_element(By.ID, "example-file").send_keys(str(example))
    driver.find_element(By.ID, "example-submit").click()
    wait.until(ec.presence_of_element_located((By.ID, "example")))
    predicted = driver.find_element(By.ID, "predicted").text
    assert predicted.startswith("predicted:")
    nearest = driver.find_elements(By.CSS_SELECTOR, "#nearest .tile a")
    assert len(nearest) == 12
    driver.save_screenshot(str(SCREENSHOTS / "example.png"))

    # Solr's answers are escaped: a hostile tag finds nothing instead of everything
    driver.get(web + "/?tag=%22)%20OR%20*:*%20OR%20(%22")
    assert count(driver) == 0
    driver.get(web + "/status")
    assert driver.find_element(By.ID, "solr-total").text == str(len(tagged))
    driver.save_screenshot(str(SCREENSHOTS / "status.png"))
