"""The published book: built once per session exactly as `make book` builds it, then checked.

The build (:mod:`dnncourse.bookbuild`, the command of ``make book``) writes into
``_build/`` and executes every chapter through the jupyter-cache, so a run after
``make book`` re-executes nothing. ``tests/test_browser.py`` reuses the same build
(``book_site.build_book`` is cached per process).

Set ``DNNCOURSE_REUSE_BOOK=1`` to check an existing ``_build/html`` without rebuilding.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
import venv
from pathlib import Path

import pytest
from book_site import HTML, ROOT, BookBuild, build_book, chapter_files, toc_files
from bs4 import BeautifulSoup

sys.path.insert(0, str(ROOT / "book" / "_ext"))
from dnncourse_book import WHEELS, wheel_name
from plain_notebook import MYST_MARKUP, pytorch_doc_url

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def book() -> BookBuild:
    return build_book()


def page(name: str) -> BeautifulSoup:
    return BeautifulSoup((HTML / f"{name}.html").read_text(encoding="utf8"), "html.parser")


def article(soup: BeautifulSoup):
    main = soup.select_one("article.bd-article")
    assert main is not None, "no <article class='bd-article'> in the page"
    return main


CODE_CELL = re.compile(r"```\{code-cell\} ipython3\n(?:---\n.*?\n---\n)?(.*?)\n```\n", re.S)
MAX_CODE_LINE = 80  # fits the code column at 1400 px (tests/test_browser.py) and a notebook


@pytest.mark.parametrize("name", chapter_files())
def test_chapter_code_fits_the_column(name):
    """Chapter code: at most 80 characters a line, no formatter escape in reader-facing code."""
    source = (ROOT / f"{name}.md").read_text(encoding="utf8")
    cells = CODE_CELL.findall(source)
    assert cells, f"{name}: no code cells found"
    long = [line for cell in cells for line in cell.splitlines() if len(line) > MAX_CODE_LINE]
    assert not long, f"{name}: code lines over {MAX_CODE_LINE} characters: {long[:3]}"
    assert not [c for c in cells if "fmt: skip" in c], f"{name}: '# fmt: skip' in a code cell"


def test_toc_names_all_chapters_and_homework():
    files = toc_files()
    assert len(chapter_files()) >= 10, f"expected the 10 lecture chapters, got {chapter_files()}"
    for path in sorted(ROOT.glob("exercises/*/*.ipynb")):
        name = path.relative_to(ROOT).with_suffix("").as_posix()
        assert name in files, f"homework notebook {name} is not in _toc.yml"
    for name in files:
        assert any((ROOT / f"{name}{ext}").exists() for ext in (".md", ".ipynb")), name


def test_build_succeeds_without_warnings(book):
    tail = "\n".join(book.log.splitlines()[-60:])
    assert book.returncode == 0, f"jupyter-book build failed (rc={book.returncode}):\n{tail}"
    warnings = [line for line in book.log.splitlines() if "WARNING:" in line]
    assert not warnings, "warnings in the build:\n" + "\n".join(warnings)


def test_a_cold_build_runs_each_chapter_once_side_by_side(book):
    """book/_ext/parallel_execution.py executes what the cache lacks, each chapter once, in
    a pool; myst-nb then finds every chapter in the cache and executes none itself."""
    pooled = re.findall(r"\] (\S+)\.md: Executed notebook in", book.log)
    by_myst_nb = re.findall(r"Executing notebook using", book.log)
    if not pooled and not by_myst_nb:
        pytest.skip("a warm build: every chapter came from the cache")
    assert not by_myst_nb, "myst-nb executed chapters itself (the pool missed them)"
    assert sorted(pooled) == sorted(set(pooled)), f"a chapter ran twice: {pooled}"
    assert "Executing" in book.log and "notebooks on" in book.log


def test_every_page_exists(book):
    assert (book.html / "index.html").exists()
    assert (book.html / "search.html").exists(), "no search page"
    assert (book.html / "searchindex.js").exists(), "no search index"
    missing = [f for f in toc_files() if not (book.html / f"{f}.html").exists()]
    assert not missing, f"pages not built: {missing}"


@pytest.mark.parametrize("name", toc_files())
def test_no_error_output(book, name):
    soup = page(name)
    bad = [
        " ".join(div.get("class", []))
        for div in article(soup).select("div.output, div.cell_output > div")
        if {"traceback", "error", "stderr"} & set(div.get("class", []))
    ]
    assert not bad, f"{name}: error/stderr outputs in the page: {bad}"
    text = article(soup).get_text()
    assert "Traceback (most recent call last)" not in text, f"{name}: a traceback is shown"


@pytest.mark.parametrize("name", toc_files())
def test_figures_have_alt_text_and_caption(book, name):
    for img in article(page(name)).find_all("img"):
        src = img.get("src", "")
        assert img.get("alt", "").strip(), f"{name}: image {src} has no alt text"
        figure = img.find_parent("figure")
        caption = figure.find("figcaption") if figure else None
        assert caption and caption.get_text(strip=True), f"{name}: image {src} has no caption"
        assert re.match(r"Fig\. \d+", caption.get_text(strip=True)), (
            f"{name}: figure {src} is not numbered: {caption.get_text(strip=True)[:60]!r}"
        )


@pytest.mark.parametrize("name", chapter_files())
def test_chapter_structure(book, name):
    main = article(page(name))
    titles = [t.get_text(strip=True) for t in main.select(".admonition > .admonition-title")]
    assert "Learning objectives" in titles, f"{name}: no 'Learning objectives' admonition"
    first = main.select_one(".admonition")
    assert first.select_one(".admonition-title").get_text(strip=True) == "Learning objectives", (
        f"{name}: the learning objectives are not the first admonition of the page"
    )
    headings = [h.get_text(strip=True).rstrip("#") for h in main.find_all("h2")]
    assert any(re.fullmatch(r"([\d.]+\s*)?Summary", h) for h in headings), (
        f"{name}: no '## Summary' section (h2 headings: {headings})"
    )
    assert main.select(".proof.algorithm"), f"{name}: no algorithm block (prf:algorithm)"
    assert main.select("a[href*='bibliography.html#']"), f"{name}: cites nothing"
    others = {
        a["href"].split("#")[0]
        for a in main.select("a.reference.internal[href]")
        if re.match(r"(\.\./book/)?\d\d_\w+\.html", a["href"])
        and Path(a["href"].split("#")[0]).stem != Path(name).name
    }
    assert others, f"{name}: no cross-reference to another chapter"
    assert main.select(".exercise"), f"{name}: no exercises"
    assert main.select("div.solution, details.solution, .solution"), f"{name}: no solutions"
    h1 = main.find("h1").get_text(strip=True)
    assert re.match(r"\d+\.\s*\S", h1), f"{name}: chapter title is not numbered: {h1!r}"


def _silent_solution_cells(main) -> list[str]:
    """Code cells inside a solution whose output in the page is empty: '<solution id> #k'."""
    silent = []
    for solution in main.select(".solution"):
        for k, cell in enumerate(solution.select("div.cell"), start=1):
            outputs = cell.select(".cell_output")
            shown = any(o.get_text(strip=True) or o.select("img, svg, table") for o in outputs)
            if not shown:
                silent.append(f"{solution.get('id', '?')} cell {k}")
    return silent


def test_silent_solution_cells_are_found():
    """The check below can fail: a solution cell without output is reported, one with is not."""
    html = """<article><div class="solution" id="s1">
      <div class="cell"><div class="cell_input">x = 1</div></div>
      <div class="cell"><div class="cell_input">print(x)</div>
        <div class="cell_output"><pre>1</pre></div></div>
      <div class="cell"><div class="cell_input">plot()</div>
        <div class="cell_output"><img src="a.svg"/></div></div></div></article>"""
    assert _silent_solution_cells(BeautifulSoup(html, "html.parser")) == ["s1 cell 1"]


@pytest.mark.parametrize("name", chapter_files())
def test_solution_code_shows_its_evidence(book, name):
    """Each code cell of an exercise solution prints or plots something in the built page
    (what the solution's prose cites): a solution cell that only computes shows nothing."""
    silent = _silent_solution_cells(article(page(name)))
    assert not silent, f"{name}: solution code cells without output: {silent}"


@pytest.mark.parametrize("name", chapter_files())
def test_chapter_launch_and_download_buttons(book, name):
    soup = page(name)
    links = [a.get("href", "") for a in soup.select(".article-header-buttons a, .dropdown a")]
    ipynb = [h for h in links if h.endswith(f"_sources/{name}.ipynb")]
    assert ipynb, f"{name}: no download link to the chapter's .ipynb"
    assert (book.html / "_sources" / f"{name}.ipynb").exists()
    assert any(h.startswith("https://colab.research.google.com/github/") for h in links), name
    assert any(h.startswith("https://mybinder.org/v2/gh/") for h in links), name
    assert soup.select(".theme-switch-button"), f"{name}: no light/dark theme switcher"
    assert soup.select(".search-button, .search-button-field"), f"{name}: no search button"


def test_homework_pages_are_not_executed(book):
    pages = [f for f in toc_files() if f.startswith("exercises/")]
    assert pages, "no homework notebooks in the book"
    for name in pages:
        main = article(page(name))
        assert not main.select(".cell_output"), f"{name}: the student notebook was executed"
        assert (book.html / "_sources" / f"{name}.ipynb").exists(), f"{name}: no download"


def test_homework_pages_have_download_and_colab_links(book):
    """Under the title of each homework page: the notebook's download and a Colab link."""
    for name in [f for f in toc_files() if f.startswith("exercises/")]:
        links = article(page(name)).select(".dnncourse-homework-links a[href]")
        hrefs = [a["href"] for a in links]
        download = [h for h in hrefs if h.endswith(f"_sources/{name}.ipynb")]
        assert download, f"{name}: no Download link at the top: {hrefs}"
        target = (book.html / Path(name).parent / download[0]).resolve()
        assert target == (book.html / "_sources" / f"{name}.ipynb").resolve()
        assert target.exists(), f"{name}: {download[0]} does not exist"
        colab = "https://colab.research.google.com/github/"
        assert any(h.startswith(colab) and h.endswith(f"/{name}.ipynb") for h in hrefs), (
            f"{name}: no Open in Colab link at the top: {hrefs}"
        )


def test_bibliography_lists_references(book):
    main = article(page("book/bibliography"))
    entries = main.select(".citation, dl.citation > dt, div.citation")
    assert len(entries) >= 10, f"only {len(entries)} bibliography entries"
    # one style: the entries are labelled as the text cites them ("Kingma and Ba, 2015")
    labels = [" ".join(e.select_one(".label").get_text().split()).strip("[]") for e in entries]
    odd = [label for label in labels if not re.fullmatch(r"\D+, \d{4}[a-z]?", label)]
    assert not odd, f"bibliography labels not in 'Author, Year' form: {odd[:5]}"
    citations = article(page(chapter_files()[4])).select(
        "a[href*='bibliography.html#']:not([href$='#reading-list'])"
    )
    cited = {" ".join(a.get_text().split()) for a in citations}
    assert cited and cited <= set(labels), f"citations without a label: {cited - set(labels)}"


def test_downloaded_chapters_are_plain_notebooks(book):
    """Each chapter's .ipynb: the install cell first, then no MyST markup anywhere."""
    for name in chapter_files():
        nb = json.loads((book.html / "_sources" / f"{name}.ipynb").read_text(encoding="utf8"))
        assert nb["cells"][0].get("id") == "dnncourse-setup", f"{name}: no install cell"
        markdown = "\n".join(
            "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"
        )
        left = [m.group(0) for m in MYST_MARKUP.finditer(markdown)]
        assert not left, f"{name}: MyST in the download: {left[:5]}"
        assert "{solution" not in markdown and "```{" not in markdown, name
        # the code of a solution is kept (collapsed), never dropped
        source = (ROOT / f"{name}.md").read_text(encoding="utf8")
        code = [c for c in nb["cells"][1:] if c["cell_type"] == "code"]
        assert len(code) == len(CODE_CELL.findall(source)), f"{name}: code cells lost"
        hidden = [c for c in code if c["metadata"].get("jupyter", {}).get("source_hidden")]
        assert bool(hidden) == ("{solution-start}" in source), f"{name}: {len(hidden)} hidden"


def _config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf8"))


@pytest.mark.parametrize("name", chapter_files())
def test_chapter_links_out(book, name):
    """PyTorch's documentation at the first mention of each API; the reading list."""
    main = article(page(name))
    first: dict[str, object] = {}
    for code in main.select("code"):
        if code.find_parent("pre") or code.find_parent(class_=["cell", "pytorch-apis"]):
            continue
        found = pytorch_doc_url(code.get_text())
        if found and found[0] not in first:
            first[found[0]] = code
    assert main.select("a.pytorch-doc"), f"{name}: no link to PyTorch's documentation"
    for api, code in first.items():
        link = code.find_parent("a", class_="pytorch-doc")
        assert link is not None, f"{name}: the first mention of {api} is not a link"
        assert link["href"] == pytorch_doc_url(api)[1]
    assert main.select("a[href*='bibliography.html#reading-list']"), f"{name}: no reading list"
    listed = main.select(".pytorch-apis a.pytorch-doc")
    assert not {a.get_text() for a in listed} & set(first), "an API listed twice"


def test_downloaded_notebook_installs_the_package_from_the_site(book, tmp_path):
    """The install cell names the wheel the site serves under html.baseurl; that wheel
    installs (from the built site, over HTTP) into a fresh venv and imports there."""
    base = _config()["html"]["baseurl"].rstrip("/") + "/"
    wheel = f"{WHEELS}/{wheel_name(ROOT)}"
    assert (book.html / wheel).is_file(), f"the site does not serve {wheel}"
    name = chapter_files()[0]
    nb = json.loads((book.html / "_sources" / f"{name}.ipynb").read_text(encoding="utf8"))
    setup = "".join(nb["cells"][0]["source"])
    line = next(li.strip() for li in setup.splitlines() if li.strip().startswith("%pip"))
    args = shlex.split(line)[2:]  # after "%pip install"
    assert base + wheel in args, f"the install cell does not install the site's wheel: {line}"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(book.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        local = f"http://127.0.0.1:{server.server_address[1]}/"
        fresh = tmp_path / "fresh"
        venv.create(fresh, with_pip=True)
        python = fresh / "bin" / "python"
        pip = [str(python), "-m", "pip", "install", "--no-deps", "--no-index"]
        proc = subprocess.run(
            pip + [a.replace(base, local) for a in args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        server.shutdown()
    # the dependencies (torch, ...) from this interpreter's site-packages, after the
    # fresh venv's own: the package itself must come from the wheel
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = next(p for p in sys.path if p.endswith("site-packages"))
    Path(purelib, "zz_dependencies.pth").write_text(ours + "\n")
    check = (
        "import dnncourse, matplotlib.pyplot as plt, pathlib, sys;"
        "from dnncourse.training import fit_mlp;"
        "plt.style.use('dnncourse.book');"
        "print(pathlib.Path(dnncourse.__file__).resolve())"
    )
    proc = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(fresh.resolve()), proc.stdout


def test_mathjax_is_served_locally(book):
    """The book is self-contained: MathJax comes from _static, not from a CDN."""
    soup = page(chapter_files()[0])
    srcs = [s.get("src", "") for s in soup.find_all("script") if "mathjax" in s.get("src", "")]
    assert srcs and all(not s.startswith(("http:", "https:", "//")) for s in srcs), srcs
    assert (book.html / "_static" / "mathjax" / "tex-chtml-full.js").exists()
