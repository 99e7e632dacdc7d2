"""The full edition in a real browser engine (headless Chromium): at 320, 600 and 800 px,
with images on and off, in light and forced dark mode. Screenshots go to the test's
folder, or to DIGEST_SCREENSHOTS when set, so a layout change can be looked at."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from digest.editions.render import render_edition
from tests.email_samples import TEMPLATES, edition, filled

# A 4:3 grey GIF stands in for every article image.
GIF = base64.b64decode("R0lGODlhBAADAIAAAMzMzP///yH5BAAAAAAALAAAAAAEAAMAAAIDhI9WADs=")


@pytest.fixture(scope="module")
def browser(chromium: Any) -> Any:
    return chromium


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("email") / "edition.html"
    path.write_text(filled(render_edition(edition(), TEMPLATES)), encoding="utf-8")
    return path


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DIGEST_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser: Any, page_file: Path, width: int, images: bool, scheme: str) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    page = context.new_page()

    def route(r: Any) -> None:
        if r.request.url.startswith("file:"):
            r.continue_()
        elif images and r.request.url.startswith("https://img.example.com/"):
            r.fulfill(status=200, content_type="image/gif", body=GIF)
        else:
            r.abort()  # nothing else leaves the machine

    page.route("**/*", route)
    page.goto(page_file.as_uri())
    page.wait_for_load_state("load")
    return page


@pytest.mark.parametrize("images", [True, False], ids=["images", "no-images"])
@pytest.mark.parametrize("width", [320, 600, 800])
def test_layout_holds(browser, page_file: Path, tmp_path: Path, width: int, images: bool) -> None:
    page = open_page(browser, page_file, width, images, "light")
    try:
        name = f"edition-{width}px-{'images' if images else 'no-images'}.png"
        page.screenshot(path=str(shots_dir(tmp_path) / name), full_page=True)
        # Nothing, not even the 180-character URL in a summary, widens the page.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        container = page.locator("table.container").bounding_box()
        assert container is not None and container["width"] == min(600, width)
        # The preview line takes no room and shows nothing.
        assert not page.locator(".preheader").is_visible()
        heroes = page.locator("img.hero")
        assert heroes.count() == 12
        for i in range(heroes.count()):
            box = heroes.nth(i).bounding_box()
            assert box is not None and box["x"] + box["width"] <= width
            if images:  # scaled to the column, keeping the image's 4:3
                assert abs(box["height"] - box["width"] * 3 / 4) <= 1
        footer = page.locator("td.footer")
        assert "Unsubscribe" in footer.inner_text()
    finally:
        page.context.close()


def test_dark_mode(browser, page_file: Path, tmp_path: Path) -> None:
    page = open_page(browser, page_file, 600, True, "dark")
    try:
        page.screenshot(path=str(shots_dir(tmp_path) / "edition-600px-dark.png"), full_page=True)
        background = page.evaluate(
            "getComputedStyle(document.querySelector('table.container')).backgroundColor"
        )
        heading = page.evaluate("getComputedStyle(document.querySelector('h1')).color")
        assert luminance(background) < 0.2 < 0.7 < luminance(heading), (background, heading)
    finally:
        page.context.close()


def luminance(css_rgb: str) -> float:
    """0 (black) to 1 (white) for a computed `rgb(r, g, b)` colour."""
    r, g, b = (int(v) for v in css_rgb.removeprefix("rgb(").rstrip(")").split(",")[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255
