"""The console in a real browser: Debian's headless Chromium driven by Selenium (through
/usr/bin/chromedriver, so Selenium Manager never downloads anything) against real API and
worker processes on PostgreSQL + Redis.

Given photos indexed and clustered (the astronaut fixture in several framings, the demo's White
House photos, a cat, a cup),
a user signs in with the AccessKey pair, sees the people grid, renames the person, watches a
task's progress bar reach 100 %, grows a worker pool, browses files, runs a playground and
views a highlight, a transcript and a super-resolved image.
Each page is saved as a screenshot: to ``$OPENIMM_ARTEFACTS_DIR/console`` (default
``tmp/artefacts/console``), or to ``CONSOLE_SCREENSHOTS_DIR`` when
``scripts/console_screenshots.py`` regenerates ``docs/screenshots``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageEnhance

from pipeline.albums import index_folder, wait_task
from pipeline.client import ImmClient
from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack, launch, wait_until
from tests.mediagen import planted_video, speech_wav
from tests.realservices import PostgresServer, RedisServer

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DEMO_PHOTOS = Path(__file__).resolve().parents[2] / "pipeline" / "demo_data" / "photos"
ROOT = Path(__file__).resolve().parents[2]
PROJECT, DATASET = "albums", "family"
UI_TIMEOUT = 60.0

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (scripts/install-system-deps.sh)",
        allow_module_level=True,
    )


def shots_dir() -> Path:
    explicit = os.environ.get("CONSOLE_SCREENSHOTS_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("OPENIMM_ARTEFACTS_DIR", ROOT / "tmp" / "artefacts")) / "console"


def _photos(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(FIXTURES / "astronaut.png").convert("RGB")
    w, h = base.size
    variants = {
        "astronaut-1.jpg": base,
        "astronaut-2.jpg": base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "astronaut-3.jpg": base.resize((int(w * 1.3), int(h * 1.3))),
        "astronaut-4.jpg": ImageEnhance.Brightness(base).enhance(1.15),
        "astronaut-5.jpg": base.crop((40, 0, w, h - 60)),
    }
    for name, img in variants.items():
        img.save(folder / name, quality=90)
    shutil.copy(FIXTURES / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(FIXTURES / "coffee.jpg", folder / "coffee.jpg")
    # the demo's public-domain White House photos: a second person (three distinct photos)
    for photo in sorted(DEMO_PHOTOS.glob("*.jpg")):
        if photo.name != "collins.jpg":
            shutil.copy(photo, folder / photo.name)


@pytest.fixture(scope="module")
def stack(
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    stack = launch(
        tmp_path_factory.mktemp("console"),
        database_url=postgres_server.create_database("console_e2e"),
        broker_url=redis_server.url(11),
        redis_url=redis_server.url(12),
        worker=False,
    )
    stack.start_worker(concurrency=2)
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def indexed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The photos uploaded, indexed and clustered through the public API."""
    folder = tmp_path_factory.mktemp("photos")
    _photos(folder)
    client = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET), timeout=120)
    result = index_folder(client, folder, PROJECT, DATASET, report=lambda *_: None)
    assert result["Clustering"]["Status"] == "Succeeded", result
    return {"client": client, **result}


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    os.environ["SE_OFFLINE"] = "1"  # Selenium Manager: never fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shoot(browser: WebDriver) -> Callable[[str], Path]:
    folder = shots_dir()
    folder.mkdir(parents=True, exist_ok=True)

    def save(name: str) -> Path:
        path = folder / f"{name}.png"
        # the whole page (at most 2400 px), not just the window
        height = browser.execute_script("return document.documentElement.scrollHeight")
        metrics = {"width": 1280, "height": min(int(height), 2400)}
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {**metrics, "deviceScaleFactor": 1, "mobile": False},
        )
        browser.save_screenshot(str(path))
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        return path

    return save


def url(stack: Stack, path: str) -> str:
    return f"http://{stack.endpoint}/console{path}"


def until(predicate: Callable[[], Any], what: str, timeout: float = UI_TIMEOUT) -> Any:
    def safe() -> Any:
        try:
            return predicate()
        # Replaced, or not yet back, after a partial refresh: look again until the timeout.
        except (StaleElementReferenceException, NoSuchElementException):
            return None

    return wait_until(safe, timeout, interval=0.2, what=what)


def sign_in(browser: WebDriver, stack: Stack, shoot: Callable[[str], Path]) -> None:
    browser.get(url(stack, "/people"))
    until(lambda: browser.find_elements(By.ID, "access_key_id"), "the sign-in form")
    shoot("signin")
    browser.find_element(By.ID, "access_key_id").send_keys(KEY_ID)
    browser.find_element(By.ID, "access_key_secret").send_keys(KEY_SECRET)
    browser.find_element(By.ID, "signin").click()
    until(lambda: browser.find_elements(By.ID, "owner"), "signed in")


def test_sign_in_people_grid_and_rename(
    stack: Stack, indexed: dict[str, Any], browser: WebDriver, shoot: Callable[[str], Path]
) -> None:
    # Given indexed photos, when the user signs in, then the people grid shows the astronaut
    sign_in(browser, stack, shoot)
    assert browser.current_url.endswith("/console/people")
    cards = until(lambda: browser.find_elements(By.CSS_SELECTOR, "#people-grid .person"), "grid")
    assert sorted(c.text.splitlines()[-1] for c in cards) == ["3 photos", "5 photos"]
    cards = [c for c in cards if "5 photos" in c.text]
    cover = cards[0].find_element(By.TAG_NAME, "img")
    until(lambda: browser.execute_script("return arguments[0].naturalWidth", cover), "cover")
    shoot("people")
    # When they open the person and rename them
    cards[0].find_element(By.TAG_NAME, "a").click()
    field = until(lambda: browser.find_element(By.ID, "rename-input"), "the person page")
    boxes = browser.find_elements(By.CSS_SELECTOR, "svg.boxed rect.mine")
    assert len(boxes) == 5  # one face box per photo of this person
    field.clear()
    field.send_keys("Eileen Collins")
    browser.find_element(By.ID, "rename").click()
    # Then the new name is shown, and the API agrees
    until(lambda: "Eileen Collins" in browser.find_element(By.ID, "person-name").text, "rename")
    assert "Renamed" in browser.find_element(By.ID, "notice").text
    shoot("person")
    clusters = indexed["client"].call(
        "QueryFigureClusters", ProjectName=PROJECT, DatasetName=DATASET
    )["FigureClusters"]
    assert sorted(str(c.get("Name", "")) for c in clusters) == ["", "Eileen Collins"]


def test_a_tasks_progress_reaches_100(
    stack: Stack, indexed: dict[str, Any], browser: WebDriver, shoot: Callable[[str], Path]
) -> None:
    # Given a task that reports progress for a few seconds
    created = indexed["client"].call(
        "CreateDiagnosticTask", ProjectName=PROJECT, Mode="Sleep", Seconds=6, Tags={"ui": "1"}
    )
    task_id = created["TaskId"]
    browser.get(url(stack, "/tasks"))
    row = f"task-{task_id}"
    until(lambda: browser.find_elements(By.ID, row), "the task's row")

    def progress() -> int:
        bar = browser.find_element(By.CSS_SELECTOR, f"#{row} progress")
        return int(float(bar.get_attribute("value") or 0))

    # When it runs, then the bar moves and ends at 100 % with the task Succeeded
    midway = until(lambda: 0 < progress() < 100 and progress(), "progress between 0 and 100")
    shoot("tasks")
    until(lambda: progress() == 100, "progress 100 %", timeout=120)
    status = browser.find_element(By.CSS_SELECTOR, f"#{row} .status").text
    assert midway < 100 and status == "Succeeded"
    browser.find_element(By.CSS_SELECTOR, f"#{row} a").click()
    until(lambda: browser.find_elements(By.ID, "task-request"), "the task page")
    assert '"Mode": "Sleep"' in browser.find_element(By.ID, "task-request").text
    assert browser.find_element(By.ID, "attempts").text == "1"
    shoot("task")


def test_grow_a_pool(
    stack: Stack, indexed: dict[str, Any], browser: WebDriver, shoot: Callable[[str], Path]
) -> None:
    # Given work waiting in a queue (so depth, in-flight tasks and the plot have something)
    for _ in range(6):
        indexed["client"].call("CreateDiagnosticTask", ProjectName=PROJECT, Mode="Sleep", Seconds=3)
    browser.get(url(stack, "/pools"))
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "svg.plot polyline"), "a depth curve")
    rows = until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#workers tr[data-worker]"), "a worker"
    )
    worker = rows[0].get_attribute("data-worker")
    before = int(rows[0].find_element(By.CSS_SELECTOR, ".concurrency").text)
    rows[0].find_element(By.CSS_SELECTOR, "button.grow").click()
    until(lambda: "grow" in browser.find_element(By.ID, "notice").text, "the grow notice")

    def processes() -> int:
        cell = browser.find_element(By.CSS_SELECTOR, f'tr[data-worker="{worker}"] .concurrency')
        return int(cell.text)

    until(lambda: processes() == before + 1, f"{worker} at {before + 1} processes")
    shoot("pools")


def test_files_search_and_file_page(
    stack: Stack, indexed: dict[str, Any], browser: WebDriver, shoot: Callable[[str], Path]
) -> None:
    browser.get(url(stack, "/files"))
    results = until(lambda: browser.find_elements(By.CSS_SELECTOR, "#results li.photo"), "files")
    assert len(results) == 11  # 5 astronaut framings, 4 White House photos, a cat, a cup
    box = browser.find_element(By.ID, "search-text")
    box.send_keys("astronaut-3")
    box.submit()
    until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#results li.photo")) == 1, "search")
    shoot("files")
    browser.find_element(By.CSS_SELECTOR, "#results a.uri").click()
    until(lambda: browser.find_elements(By.ID, "file-photo"), "the file page")
    assert browser.find_elements(By.CSS_SELECTOR, "#file-photo rect")
    shoot("file")


def test_media_page_and_a_playground(
    stack: Stack, indexed: dict[str, Any], browser: WebDriver, shoot: Callable[[str], Path]
) -> None:
    browser.get(url(stack, "/media"))
    links = until(lambda: browser.find_elements(By.CSS_SELECTOR, "#playgrounds a"), "services")
    names = [a.text for a in links]
    assert "image_classification" in names and "asr" in names
    shoot("media")
    browser.get(url(stack, "/media/playground/image_classification"))
    upload = until(lambda: browser.find_element(By.NAME, "file"), "the playground form")
    upload.send_keys(str(FIXTURES / "chelsea.jpg"))
    browser.find_element(By.ID, "run").click()
    answer = until(lambda: browser.find_elements(By.ID, "answer"), "the answer", timeout=180)
    assert '"success": true' in answer[0].text
    labels = browser.find_element(By.ID, "render-labels").text.lower()
    assert "cat" in labels
    shoot("playground")


def _media_tasks(stack: Stack, client: ImmClient, folder: Path) -> dict[str, str]:
    """A highlight, a transcript and a super-resolved image, made through the public API."""
    folder.mkdir(parents=True, exist_ok=True)
    planted_video(folder / "clip.mp4", seconds=8, event=(4, 6))
    speech_wav(folder / "speech.wav", "The meeting moves to Tuesday. Bring the slides.")
    Image.open(FIXTURES / "chelsea.jpg").convert("RGB").resize((160, 106)).save(folder / "cat.png")
    for name in ("clip.mp4", "speech.wav", "cat.png"):
        client.put_object(f"oss://media-in/{name}", folder / name)
    requests = {
        "Highlight": (
            "CreateHighlightTask",
            {
                "Type": "Retrieval",
                "Sources": [{"URI": "oss://media-in/clip.mp4"}],
                "Output": {
                    "URI": "oss://media-out/clip-hl.mp4",
                    "Container": "mp4",
                    "MaxDuration": 2,
                },
            },
        ),
        "SpeechRecognition": (
            "CreateSpeechRecognitionTask",
            {"SourceURI": "oss://media-in/speech.wav", "Language": "en-US"},
        ),
        "VideoSuperResolution": (
            "CreateVideoSuperResolutionTask",
            {
                "SourceURI": "oss://media-in/cat.png",
                "TargetURI": "oss://media-out/cat-x3.png",
                "Scale": 3,
            },
        ),
    }
    created = {
        kind: client.call(action, ProjectName=PROJECT, **params)["TaskId"]
        for kind, (action, params) in requests.items()
    }
    for kind, task_id in created.items():
        task = wait_task(client, PROJECT, kind, task_id, timeout=300)
        assert task["Status"] == "Succeeded", task
    return created


def test_media_viewers(
    stack: Stack,
    indexed: dict[str, Any],
    browser: WebDriver,
    shoot: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    created = _media_tasks(stack, indexed["client"], tmp_path)
    # A highlight: both players, the chosen window shaded on the score curve
    browser.get(url(stack, f"/media/view/{PROJECT}/{created['Highlight']}"))
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "svg.plot rect.window"), "the window")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.plot polyline")
    shoot("highlight")
    # A transcript: a line's timestamp seeks the audio
    browser.get(url(stack, f"/media/view/{PROJECT}/{created['SpeechRecognition']}"))
    lines = until(lambda: browser.find_elements(By.CSS_SELECTOR, "#transcript li"), "transcript")
    assert "tuesday" in " ".join(li.text for li in lines).lower()
    player = browser.find_element(By.ID, "audio-player")
    until(lambda: browser.execute_script("return arguments[0].readyState", player) >= 1, "audio")
    target = float(lines[-1].get_attribute("data-seek") or 0)
    lines[-1].click()
    position = lambda: browser.execute_script("return arguments[0].currentTime", player)  # noqa: E731
    until(lambda: position() >= target - 0.05, f"the audio at {target} s")
    shoot("transcript")
    # Super-resolution: the before/after slider moves the clip of the "after" image
    browser.get(url(stack, f"/media/view/{PROJECT}/{created['VideoSuperResolution']}"))
    slider = until(lambda: browser.find_element(By.CSS_SELECTOR, "input[data-compare]"), "slider")
    after = browser.find_element(By.ID, "sr-after")
    browser.execute_script(
        "arguments[0].value = 20; arguments[0].dispatchEvent(new Event('input'))", slider
    )
    assert "80%" in (after.value_of_css_property("clip-path") or "")
    shoot("super-resolution")
