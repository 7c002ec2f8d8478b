"""The built book in a real browser: Debian's chromium, headless, driven by selenium.

Serves ``_build/html`` (built once per session by ``tests/book_site.py``'s ``build_book``)
over a localhost HTTP server and opens the index and every page of the table of contents:
MathJax rendered every formula (no raw ``$$``, no MathJax error), every image loaded, no
request left the machine (the book is self-contained), no internal link or anchor is
broken, the light/dark switch and the search work. At a 1400 px wide window no display
equation and no code cell is wider than its column (nothing scrolls sideways), no figure
caption holds plain-text math (``x^2``, ``kappa``, ``<=``: it belongs in ``$...$``), and a
chapter's downloadable notebook holds no MyST directive or role (Jupyter and Colab would
show it raw). Saves a screenshot of chapter 1 to ``_build/screenshot-chapter1.png`` (and
one per page under ``_build/screenshots/``), and one of a chapter at phone width
(``_build/screenshot-phone.png``), where the page itself must not scroll sideways.

Needs ``apt-get install chromium chromium-driver``; skipped without them, except when
``DNNCOURSE_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where it fails instead.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from book_site import HTML, ROOT, build_book, chapter_files, toc_files
from bs4 import BeautifulSoup

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = (
    "needs Debian's headless chromium and its driver: "
    "`sudo apt-get update && sudo apt-get install -y chromium chromium-driver`"
)
PAGES = ["index", *toc_files()]
WIDTH, HEIGHT = 1400, 1600  # a laptop's browser window, in CSS pixels
PHONE = (390, 844)  # a phone held upright

sys.path.insert(0, str(ROOT / "book" / "_ext"))
from plain_notebook import MYST_MARKUP  # noqa: E402

# Math typed as text in a caption: powers, subscripts, Greek names, <=, sqrt(...).
PLAIN_MATH = re.compile(
    r"\w\^[\w({-]|\b[a-zA-Z]\d\^|(?<![\w-])(kappa|alpha|beta|gamma|lambda|sigma|sqrt|mu)"
    r"(?![\w-])|<=|>="
)


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if not missing:
        return
    message = f"{', '.join(missing)} not found: {INSTALL_HINT}"
    if os.environ.get("DNNCOURSE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"DNNCOURSE_REQUIRE_BROWSER=1 but {message}")
    pytest.skip(message)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(HTML), **kwargs)

    def log_message(self, format, *args):  # keep pytest's output clean
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """The browser may drop a connection it no longer needs: not an error of the book."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def server():
    _require_browser()
    book = build_book()
    if book.returncode != 0:
        pytest.fail("the book did not build (see tests/test_book.py::test_build_succeeds...)")
    httpd = _QuietServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def driver(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dnncourse-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(60)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(driver, url: str) -> None:
    """Load a page and wait until MathJax (where the page has math) finished typesetting."""
    driver.get(url)
    driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const wait = () => {
          if (document.readyState !== "complete") return setTimeout(wait, 50);
          if (!document.querySelector(".math")) return done(true);
          if (!(window.MathJax && MathJax.startup && MathJax.startup.promise))
            return setTimeout(wait, 50);
          MathJax.startup.promise.then(() => done(true), (e) => done(String(e)));
        };
        wait();
        """
    )


@functools.cache
def _fetch(url: str) -> tuple[int, str]:
    """Status and (for HTML) text of a URL on the local server; cached across pages."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read().decode("utf8", "replace") if "html" in kind else ""
            return response.status, body
    except urllib.error.HTTPError as err:
        return err.code, ""


@functools.cache
def _anchors(url: str) -> frozenset[str]:
    soup = BeautifulSoup(_fetch(url)[1], "html.parser")
    ids = {tag["id"] for tag in soup.find_all(id=True)}
    return frozenset(ids | {tag["name"] for tag in soup.find_all("a", attrs={"name": True})})


@pytest.mark.parametrize("name", PAGES)
def test_page_in_browser(driver, server, name):
    url = f"{server}/{name}.html"
    _open(driver, url)
    assert driver.title and "404" not in driver.title, f"{name}: page did not load"
    # first, so that a failing page can be looked at too
    _screenshot(driver, ROOT / "_build" / "screenshots" / f"{name.replace('/', '__')}.png")

    # MathJax: every formula typeset, none left raw, no MathJax error.
    math = driver.execute_script(
        """
        const math = [...document.querySelectorAll("article .math")];
        const article = document.querySelector("article.bd-article");
        const clone = article.cloneNode(true);
        clone.querySelectorAll("pre, code, script, .highlight, .math, mjx-container, .cell_output")
             .forEach((e) => e.remove());
        const text = clone.innerText;
        return {
          formulas: math.length,
          untypeset: math.filter((m) => !m.querySelector("mjx-container"))
                         .map((m) => m.textContent.slice(0, 80)),
          containers: document.querySelectorAll("mjx-container").length,
          errors: [...document.querySelectorAll("mjx-merror, [data-mjx-error]")]
                    .map((e) => e.getAttribute("data-mjx-error") || e.textContent),
          undefinedMacros: [...document.querySelectorAll("mjx-container [style*='red'],"
                             + " mjx-container [mathcolor='red']")].map((e) => e.textContent),
          rawDisplay: text.includes("$$"),
          rawTex: [...text.matchAll(/.{0,40}\\\\[a-zA-Z]{2,}.{0,20}/g)].map((m) => m[0]),
          rawInline: [...text.matchAll(/.{0,30}\\$[^$\\s][^$\\n]{0,80}\\$/g)].map((m) => m[0]),
        };
        """
    )
    if math["formulas"]:
        assert math["containers"] > 0, f"{name}: MathJax rendered nothing"
    assert not math["untypeset"], f"{name}: formulas left untypeset: {math['untypeset'][:5]}"
    assert not math["errors"], f"{name}: MathJax errors: {math['errors'][:5]}"
    assert not math["undefinedMacros"], f"{name}: undefined macros: {math['undefinedMacros']}"
    assert not math["rawDisplay"], f"{name}: raw $$ left in the text"
    assert not math["rawTex"], f"{name}: TeX left raw (math not parsed): {math['rawTex']}"
    assert not math["rawInline"], f"{name}: $...$ left raw: {math['rawInline']}"

    # Every image loaded.
    broken = driver.execute_script(
        "return [...document.images].filter((i) => !(i.complete && i.naturalWidth > 0))"
        ".map((i) => i.getAttribute('src'));"
    )
    assert not broken, f"{name}: images that did not load: {broken}"

    # Self-contained: nothing was requested from another host (no CDN).
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name);"
    )
    external = [r for r in resources if not r.startswith(server)]
    assert not external, f"{name}: resources loaded from outside the book: {external}"
    severe = [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE"
        and server in entry["message"]
        and "/favicon.ico" not in entry["message"]  # the browser asks on its own
    ]
    assert not severe, f"{name}: browser errors: {severe}"

    # No broken internal link: every local href/src answers 200, every anchor exists.
    targets = driver.execute_script(
        """
        const urls = [];
        document.querySelectorAll("a[href]").forEach((a) => urls.push(a.href));
        document.querySelectorAll("img[src], script[src]").forEach((e) => urls.push(e.src));
        document.querySelectorAll("link[href]").forEach((l) => urls.push(l.href));
        return urls;
        """
    )
    problems = []
    for target in sorted(set(targets)):
        if not target.startswith(server):
            continue
        parts = urllib.parse.urlsplit(target)
        page_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        status, _ = _fetch(page_url)
        if status != 200:
            problems.append(f"{target} -> HTTP {status}")
        elif parts.fragment and page_url.endswith(".html"):
            anchor = urllib.parse.unquote(parts.fragment)
            if anchor not in _anchors(page_url):
                problems.append(f"{target} -> no element with id {anchor!r}")
    assert not problems, f"{name}: broken internal links:\n" + "\n".join(problems)


def _overflowing(driver) -> dict[str, list[str]]:
    """Display equations and code cells of the article wider than their column."""
    return driver.execute_script(
        """
        const wide = (e) => e.scrollWidth > e.clientWidth + 1;
        const article = document.querySelector("article.bd-article");
        const text = (e) => e.textContent.trim().replace(/\\s+/g, " ").slice(0, 70);
        return {
          equations: [...article.querySelectorAll("div.math, mjx-container[display='true']")]
                       .filter(wide).map(text),
          code: [...article.querySelectorAll(".cell_input pre, div.highlight pre")]
                  .filter((e) => !e.closest(".cell_output")).filter(wide).map(text),
        };
        """
    )


@pytest.mark.parametrize("name", PAGES)
def test_layout_at_1400px(driver, server, name):
    """Nothing scrolls sideways at 1400 px; captions typeset their math."""
    driver.set_window_size(WIDTH, HEIGHT)
    _open(driver, f"{server}/{name}.html")
    wide = _overflowing(driver)
    assert not wide["equations"], f"{name}: display equations wider than the column: {wide}"
    assert not wide["code"], f"{name}: code cells wider than the column: {wide['code']}"
    captions = driver.execute_script(
        """
        return [...document.querySelectorAll("article figcaption")].map((c) => {
          const clone = c.cloneNode(true);
          clone.querySelectorAll("mjx-container, .math, code").forEach((e) => e.remove());
          return clone.innerText;
        });
        """
    )
    plain = [f"{m.group(0)!r} in {c[:70]!r}" for c in captions for m in PLAIN_MATH.finditer(c)]
    assert not plain, f"{name}: plain-text math in figure captions: {plain}"


@pytest.mark.parametrize("name", chapter_files())
def test_download_is_plain_markdown(server, name):
    """The chapter's downloadable notebook (the link on its page) holds no MyST."""
    soup = BeautifulSoup(_fetch(f"{server}/{name}.html")[1], "html.parser")
    links = [a["href"] for a in soup.select("a[href$='.ipynb']") if "_sources" in a["href"]]
    assert links, f"{name}: no download link"
    url = urllib.parse.urljoin(f"{server}/{name}.html", links[0])
    with urllib.request.urlopen(url, timeout=30) as response:
        nb = json.loads(response.read().decode("utf8"))
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    left = [m.group(0) for m in MYST_MARKUP.finditer(markdown)]
    assert not left, f"{name}: MyST in the downloaded notebook: {left[:5]}"


def test_chapter_at_phone_width(driver, server):
    """A chapter at phone width: screenshot, and the page does not scroll sideways."""
    name = chapter_files()[4]
    driver.set_window_size(*PHONE)
    try:
        _open(driver, f"{server}/{name}.html")
        path = ROOT / "_build" / "screenshot-phone.png"
        assert driver.save_screenshot(str(path)), "chromium could not save a screenshot"
        _screenshot(driver, ROOT / "_build" / "screenshot-phone-full.png", scale=1.0)
        widths = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth];"
        )
        assert widths[0] <= widths[1] + 1, f"{name} scrolls sideways at phone width: {widths}"
    finally:
        driver.set_window_size(WIDTH, HEIGHT)


def _screenshot(driver, path: Path, scale: float = 0.5) -> None:
    """The whole page (not only the viewport), scaled down, as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": scale},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def test_screenshot_of_chapter_one(driver, server):
    first = chapter_files()[0]
    _open(driver, f"{server}/{first}.html")
    path = ROOT / "_build" / "screenshot-chapter1.png"
    assert driver.save_screenshot(str(path)), "chromium could not save a screenshot"
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small"


def test_dark_mode_switch(driver, server):
    first = chapter_files()[0]
    _open(driver, f"{server}/{first}.html")
    before = driver.execute_script("return document.documentElement.dataset.theme;")
    seen = {before}
    for _ in range(3):  # the switcher cycles light -> dark -> auto (order depends on start)
        driver.execute_script("document.querySelector('.theme-switch-button').click();")
        seen.add(driver.execute_script("return document.documentElement.dataset.theme;"))
    assert {"light", "dark"} <= seen, f"the theme switcher gave only {seen}"
    driver.execute_script("document.documentElement.dataset.theme = 'dark';")
    driver.save_screenshot(str(ROOT / "_build" / "screenshot-chapter1-dark.png"))


def test_search_finds_a_chapter(driver, server):
    driver.get(f"{server}/search.html?q=momentum")
    found = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        let tries = 0;
        const poll = () => {
          const hits = document.querySelectorAll("#search-results li, ul.search li");
          if (hits.length || ++tries > 200) return done(hits.length);
          setTimeout(poll, 100);
        };
        poll();
        """
    )
    assert found > 0, "the book's search found nothing for 'momentum'"
