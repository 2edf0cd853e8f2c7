"""A real browser for the report tests: Debian's chromium, headless, driven by Selenium through
/usr/bin/chromedriver (or whatever `chromium` / `chromedriver` the PATH holds). `find_browser`
says why none can be used (the tests then skip with that reason); `start_browser` starts one
with a fresh profile folder and the browser console log recorded; `page_problems`,
`screenshot_colours` are what the tests check a page with."""

import importlib.util
import io
import shutil
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _first(names: tuple[str, ...], places: tuple[str, ...]) -> str | None:
    for place in places:
        if Path(place).is_file():
            return place
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def find_browser() -> tuple[str | None, str | None, str]:
    """(chromium, chromedriver, why not usable: '' when both were found)."""
    if importlib.util.find_spec("selenium") is None:
        return None, None, "selenium is not installed (pip install -r requirements.txt)"
    chromium = _first(CHROMIUM_NAMES, ("/usr/bin/chromium",))
    driver = _first(DRIVER_NAMES, ("/usr/bin/chromedriver",))
    if chromium is None:
        return None, driver, "chromium not found (Debian: apt-get install chromium chromium-driver)"
    if driver is None:
        return chromium, None, "chromedriver not found (Debian: apt-get install chromium-driver)"
    return chromium, driver, ""


def start_browser(chromium: str, driver: str, profile: Path, width: int = 1280, height: int = 1600):
    """A headless chromium (Selenium WebDriver) with a fresh profile in `profile`, recording every
    browser console message (goog:loggingPrefs browser ALL)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(60)
    return browser


def open_page(browser, path: Path) -> list[dict]:
    """Load the page from the file system and return the console messages it produced."""
    browser.get_log("browser")  # forget what earlier pages logged
    browser.get(Path(path).resolve().as_uri())
    browser.execute_script("return document.readyState")
    return browser.get_log("browser")


def severe(log: list[dict]) -> list[str]:
    return [entry["message"] for entry in log if entry.get("level") == "SEVERE"]


def screenshot_colours(browser, path: Path | None = None) -> int:
    """Distinct colours of a screenshot of the window (saved to `path` when given)."""
    from PIL import Image

    png = browser.get_screenshot_as_png()
    if path is not None:
        Path(path).write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return len(image.getcolors(maxcolors=1 << 24) or [])
