"""A headless Chromium driven by Selenium, with the system chromedriver (no driver download)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from helpers_wait import wait_for

WINDOW = (1500, 1000)


@contextlib.contextmanager
def headless_chrome(browser: Path, driver: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-dev-shm-usage",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(str(driver)), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def wait_until(check: Callable[[], Any], timeout: float, what: str, page: Any = None) -> Any:
    """`wait_for` on a page: a failing `check` is "not yet"; a timeout shows the page's text."""
    return wait_for(check, timeout, what, ignore=(Exception,),
                    detail=(lambda: body_text(page)[:1500]) if page is not None else None)


def body_text(page: Any) -> str:
    return page.find_element("tag name", "body").text


# Scroll the window and every scrollable box a step: virtualised tables (MLflow's compare
# view) only render the rows near the viewport.
SCROLL_STEP = """
window.scrollBy(0, 300);
for (const e of document.querySelectorAll('*')) {
  if (e.scrollHeight > e.clientHeight + 40 && getComputedStyle(e).overflowY !== 'visible') {
    e.scrollTop += 300;
  }
}
"""

def scroll_until(page: Any, needle: str, timeout: float) -> None:
    """Scroll step by step until `needle` is in the page's HTML (virtualised lists)."""
    wait_until(lambda: needle in page.page_source or page.execute_script(SCROLL_STEP), timeout,
               needle, page)
    wait_until(lambda: needle in page.page_source, 5, needle, page)
