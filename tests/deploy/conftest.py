"""One headless chromium for every browser test of the session (it starts in about two seconds);
a test asking for `browser` is skipped, with the reason, where chromium or chromedriver is missing."""

import pytest

from tests.deploy.browser import find_browser, start_browser


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    chromium, driver, why_not = find_browser()
    if why_not:
        pytest.skip(f"no browser for the report tests: {why_not}")
    started = start_browser(chromium, driver, tmp_path_factory.mktemp("chromium-profile"))
    yield started
    started.quit()
