"""Sphinx hooks for the dnncourse book (a local extension named in ``_config.yml``).

Chapters are MyST markdown notebooks. sphinx-book-theme already offers the executed
``.ipynb`` of each chapter for download and builds Binder and Colab links from the
``repository`` section of ``_config.yml``. The gaps it leaves are closed here:

* Colab opens notebooks only from GitHub and cannot read a ``.md`` file, so the Colab
  link of a markdown chapter points at ``<pagename>.ipynb`` on the branch named by
  ``dnncourse_notebooks_branch``; the publishing workflow pushes the downloadable
  notebooks (``_build/html/_sources/**/*.ipynb``) there.
* Colab (or any machine) may not have the course package, so the downloadable
  notebook of a chapter starts with a cell that installs it when ``import dnncourse``
  would fail, from what the book itself publishes: the build makes a wheel of the
  package (:func:`build_wheel`) and serves it with the site, at
  ``<html.baseurl>/_static/wheels/`` (:func:`wheel_url`). ``html.baseurl`` in
  ``_config.yml`` is the one setting that names where the book, and so the package, is
  published. Binder installs the package from ``binder/``.
* A downloaded notebook must read well in Jupyter and Colab, which know no MyST: its
  markdown cells are rewritten into plain Markdown (``plain_notebook``: directives as
  block quotes, solutions folded or removed, citations as author-year text).
* A released homework notebook is shown as a page; it gets explicit "Download" and
  "Open in Colab" links at its top (the header buttons are easy to miss).
* The bibliography lists entries under author-year labels ("Kingma and Ba, 2015"), the
  style its author-year citations use (pybtex's styles know only alpha and numeric
  labels): the ``authoryear`` style registered here.
* The jupyter-cache keys a notebook on its code cells only: a change to the
  ``dnncourse`` package would leave stale outputs in the book. The package's code (its
  AST: comments, formatting and docstrings do not count) and its figure style
  (``*.mplstyle``) are hashed on each build; when
  it changed since the last build, the execution cache is emptied and every page
  re-read, so every chapter runs again. A prose-only change to a chapter still
  re-executes nothing.
* A cold build executes the chapters side by side, one kernel per core
  (``parallel_execution``), before Sphinx reads them.
* A chapter links to PyTorch's documentation: the first inline mention of each PyTorch
  API in its prose becomes a link (``plain_notebook.pytorch_doc_url``), and the APIs its
  code uses that the prose does not name are listed, linked, at the end of its summary.
"""

from __future__ import annotations

import ast
import concurrent.futures
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from docutils import nodes
from pybtex.database import parse_file
from pybtex.plugin import find_plugin, register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.application import Sphinx

sys.path.insert(0, str(Path(__file__).parent))
from plain_notebook import Resolver, plain_notebook, pytorch_doc_url

SETUP_CELL_ID = "dnncourse-setup"


WHEELS = "_static/wheels"  # where the site serves the package's wheel


def _setup_cell(wheel: str) -> dict:
    source = (
        "# Setup: install the course package where it is missing (e.g. on Colab),\n"
        "# from the wheel published with the book.\n"
        "import importlib.util\n"
        "\n"
        'if importlib.util.find_spec("dnncourse") is None:\n'
        f"    %pip install --quiet {wheel}\n"
    )
    return {
        "cell_type": "code",
        "execution_count": None,
        "id": SETUP_CELL_ID,
        "metadata": {"tags": ["remove-cell"]},
        "outputs": [],
        "source": source,
    }


# pybtex's ``render_as("text")`` looks its backend up among the entry points of every
# installed distribution on each call (a third of a cold build's Sphinx time went there,
# through the labels and citations below): the backend is looked up once.
_TEXT = find_plugin("pybtex.backends", "text")()


def _names(entry) -> str:
    """'Polyak', 'Kingma and Ba', 'Ioffe et al.': the authors (else editors) as cited."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    last = [
        Text.from_latex(" ".join(p.prelast_names + p.last_names)).render(_TEXT) for p in people
    ]
    if len(last) > 2:
        return f"{last[0]} et al."
    return " and ".join(last) or entry.fields.get("title", "?")


class AuthorYearLabels(BaseLabelStyle):
    """Labels "Author, Year", as the citations read (a, b, ... where two would coincide)."""

    def format_labels(self, sorted_entries):
        labels = [f"{_names(e)}, {e.fields.get('year', '')}".strip(", ") for e in sorted_entries]
        for label in set(labels):
            same = [i for i, other in enumerate(labels) if other == label]
            for n, i in enumerate(same if len(same) > 1 else []):
                labels[i] = f"{label}{chr(ord('a') + n)}"
        return iter(labels)


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt entries, sorted by author and year, labelled 'Author Year'."""

    default_label_style = "dnncourse_authoryear"
    default_sorting_style = "author_year_title"


register_plugin("pybtex.style.labels", "dnncourse_authoryear", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "dnncourse_authoryear", AuthorYearStyle)


def _resolver(app: Sphinx, docname: str) -> Resolver:
    """How a downloaded notebook spells the book's cross-references (see plain_notebook)."""
    if not hasattr(app, "dnncourse_bib"):
        app.dnncourse_bib = {}
        for bibfile in app.config.bibtex_bibfiles:
            app.dnncourse_bib.update(parse_file(Path(app.confdir, bibfile)).entries)
    bib, env = app.dnncourse_bib, app.env
    labels = env.domaindata["std"]["labels"]

    def cite(keys: list[str], textual: bool) -> str:
        found = [(_names(bib[k]), bib[k].fields.get("year", "")) for k in keys if k in bib]
        if textual:
            return ", ".join(f"{names} ({year})" for names, year in found)
        return "(" + "; ".join(f"{names}, {year}" for names, year in found) + ")"

    def doc(target: str) -> tuple[str, str]:
        name = str(Path(docname).parent / target) if not target.startswith("/") else target[1:]
        title = env.titles[name].astext() if name in env.titles else target
        return title, f"{Path(target).name}.ipynb"

    def numref(label: str) -> str:
        doc_of, labelid, _ = labels.get(label, (None, None, None))
        number = env.toc_fignumbers.get(doc_of, {}).get("figure", {}).get(labelid)
        return "Fig. " + ".".join(map(str, number)) if number else "the figure"

    def ref(label: str) -> str:
        return labels.get(label, (None, None, label))[2] or label

    # what the chapter's code glued, as myst-nb stored it (removed cells included)
    stored = Path(app.outdir).parent / "jupyter_execute" / f"{docname}.glue.json"
    glue = {}
    if stored.is_file():
        for key, output in json.loads(stored.read_text(encoding="utf8")).items():
            if "text/plain" in output.get("data", {}):
                glue[key] = output["data"]["text/plain"]
    return Resolver(cite=cite, doc=doc, numref=numref, ref=ref, glue=glue)


def _project(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf8"))["project"]


def wheel_name(root: Path) -> str:
    """The file name of the package's wheel (pure Python: ``py3-none-any``)."""
    project = _project(root)
    return f"{project['name']}-{project['version']}-py3-none-any.whl"


def wheel_url(app: Sphinx) -> str:
    """Where the published book serves the wheel: under ``html.baseurl``."""
    base = app.config.html_baseurl
    if not base:
        raise ValueError("_config.yml: html.baseurl must name where the book is published")
    return f"{base.rstrip('/')}/{WHEELS}/{wheel_name(Path(app.confdir))}"


def build_wheel(root: Path, out: Path) -> Path:
    """A wheel of the package (its sources and ``pyproject.toml``) in ``out``.

    Built from a copy of those files, so that no ``build/`` folder is left in the
    checkout; no build isolation and no dependencies: nothing is downloaded.
    """
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).exists():
                shutil.copy2(root / name, tmp)
        shutil.copytree(
            root / "src",
            Path(tmp, "src"),
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
        subprocess.run(
            [*pip_wheel, "--no-build-isolation", "--wheel-dir", str(out), tmp], check=True
        )
    wheel = out / wheel_name(root)
    if not wheel.is_file():
        raise FileNotFoundError(f"the package's wheel was not built: {wheel}")
    return wheel


def make_wheel(app: Sphinx, env=None, docnames=None) -> None:
    """Starts building the wheel beside the build (a thread); the site gets it at the end.

    It starts once the chapters have run (``parallel_execution``, at the same event), when
    Sphinx reads and writes on one core and the other is free."""
    if app.builder.format != "html" or hasattr(app, "dnncourse_wheel"):
        return
    staging = Path(app.outdir).parent / ".dnncourse-wheel"
    shutil.rmtree(staging, ignore_errors=True)
    app.dnncourse_wheel = concurrent.futures.ThreadPoolExecutor(1).submit(
        build_wheel, Path(app.confdir), staging
    )


def publish_wheel(app: Sphinx, exception) -> None:
    future = getattr(app, "dnncourse_wheel", None)
    if exception is None and future is not None:
        wheel = future.result()
        target = Path(app.outdir, WHEELS)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.copy2(wheel, target)


def _make_download(path: Path, wheel: str, resolver: Resolver) -> None:
    """Plain Markdown and the install cell for a downloadable notebook (idempotent)."""
    nb = json.loads(path.read_text(encoding="utf8"))
    if nb["cells"] and nb["cells"][0].get("id") == SETUP_CELL_ID:
        return
    plain_notebook(nb, resolver)
    nb["cells"].insert(0, _setup_cell(wheel))
    # Cell ids need nbformat >= 4.5.
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
        nb["nbformat"], nb["nbformat_minor"] = 4, 5
        for i, cell in enumerate(nb["cells"][1:]):
            cell.setdefault("id", f"cell-{i}")
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf8")


def fix_notebook_links(app: Sphinx, pagename: str, templatename: str, context, doctree):
    """Runs after sphinx-book-theme built the header buttons (its priority is 501)."""
    ipynb = context.get("ipynb_source")
    if not ipynb or context.get("page_source_suffix") != ".md":
        return  # not a markdown notebook (e.g. a released homework .ipynb): nothing to fix
    opts = app.config.html_theme_options
    repo_url = opts.get("repository_url", "").rstrip("/")
    _make_download(Path(app.outdir, "_sources", ipynb), wheel_url(app), _resolver(app, pagename))

    nb_branch = app.config.dnncourse_notebooks_branch
    org_repo = repo_url.split("github.com/")[-1]
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []):
            if button.get("text") == "Colab":
                button["url"] = (
                    f"{opts['launch_buttons']['colab_url'].rstrip('/')}/github/"
                    f"{org_repo}/blob/{nb_branch}/{pagename}.ipynb"
                )


def homework_links(app: Sphinx, pagename: str, templatename: str, context, doctree):
    """Put "Download" and "Open in Colab" links under a released homework's title."""
    if not pagename.startswith("exercises/") or context.get("page_source_suffix") != ".ipynb":
        return
    opts = app.config.html_theme_options
    org_repo = opts.get("repository_url", "").rstrip("/").split("github.com/")[-1]
    branch = opts.get("repository_branch") or "main"
    colab = opts["launch_buttons"]["colab_url"].rstrip("/")
    name = Path(pagename).name
    download = f"{'../' * pagename.count('/')}_sources/{pagename}.ipynb"
    links = (
        '<p class="dnncourse-homework-links">'
        f'<a class="reference external" href="{download}" download="{name}.ipynb">'
        f"Download {name}.ipynb</a> | "
        f'<a class="reference external" href="{colab}/github/{org_repo}/blob/{branch}/'
        f'{pagename}.ipynb">Open in Colab</a></p>'
    )
    body = context.get("body", "")
    end_h1 = body.find("</h1>")
    if end_h1 >= 0 and "dnncourse-homework-links" not in body:
        cut = end_h1 + len("</h1>")
        context["body"] = body[:cut] + links + body[cut:]


def dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context, doctree):
    """Drop repeated scripts: jupyter-book registers sphinx-thebe's and togglebutton's
    inline configuration twice, and a second ``const THEBE_JS_URL`` is a SyntaxError."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # the same inline script is registered once with filename None and once with ""
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", script) or "", tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    if "script_files" in context:
        context["script_files"] = unique


def _code_of(source: str) -> str:
    """The code of a module without comments, formatting and docstrings (its AST)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _package_hash(locations: list[str] | None = None) -> str:
    """SHA-256 of the dnncourse package's code (docstrings and comments aside) and styles."""
    if locations is None:
        spec = importlib.util.find_spec("dnncourse")
        locations = list(spec.submodule_search_locations or []) if spec else []
    digest = hashlib.sha256()
    for location in locations:
        for path in sorted(Path(location).rglob("*.py")):
            digest.update(path.relative_to(location).as_posix().encode())
            digest.update(_code_of(path.read_text(encoding="utf8")).encode())
        for path in sorted(Path(location).rglob("*.mplstyle")):  # the figures' style
            digest.update(path.relative_to(location).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _stamp(app: Sphinx) -> Path:
    return Path(app.outdir).parent / ".dnncourse-package-hash"


def invalidate_cache_on_package_change(app: Sphinx, config) -> None:
    """Runs at config-inited, before myst-nb opens the cache (at builder-inited)."""
    app.dnncourse_package_hash = current = _package_hash()
    stamp = _stamp(app)
    previous = stamp.read_text().strip() if stamp.exists() else None
    app.dnncourse_package_changed = previous is not None and previous != current
    if app.dnncourse_package_changed:
        cache = Path(app.outdir).parent / ".jupyter_cache"
        if config.nb_execution_cache_path:
            cache = Path(app.confdir, config.nb_execution_cache_path)
        print(f"dnncourse changed since the last build: emptying {cache}, re-executing all")
        shutil.rmtree(cache, ignore_errors=True)


def reread_all_on_package_change(app: Sphinx, env, added, changed, removed) -> list[str]:
    return sorted(env.found_docs) if app.dnncourse_package_changed else []


def write_package_stamp(app: Sphinx, exception) -> None:
    if exception is None:
        _stamp(app).parent.mkdir(parents=True, exist_ok=True)
        _stamp(app).write_text(app.dnncourse_package_hash + "\n")


CHAPTER = re.compile(r"book/\d\d_\w+")
_CODE_API = re.compile(r"(?<![\w.])(?:torch|nn|F)(?:\.[A-Za-z_]\w*)+")


def _pytorch_link(name: str, url: str, text: str | None = None) -> nodes.reference:
    ref = nodes.reference("", "", internal=False, refuri=url, classes=["pytorch-doc"])
    ref += nodes.literal(text or name, text or name)
    return ref


def link_pytorch_apis(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """PyTorch documentation links in a chapter (see the module docstring)."""
    if not CHAPTER.fullmatch(docname):
        return
    linked: set[str] = set()
    for literal in list(doctree.findall(nodes.literal)):
        if isinstance(literal.parent, (nodes.reference, nodes.literal_block)):
            continue
        found = pytorch_doc_url(literal.astext())
        if found is None or found[0] in linked:
            continue
        linked.add(found[0])
        literal.replace_self(_pytorch_link(*found, text=literal.astext()))
    in_code = {}
    for block in doctree.findall(nodes.literal_block):
        for name in _CODE_API.findall(block.astext()):
            found = pytorch_doc_url(name)
            if found and found[0] not in linked:
                in_code.setdefault(found[0], found[1])
    summary = next(
        (
            section
            for section in doctree.findall(nodes.section)
            if section.children
            and isinstance(section[0], nodes.title)
            and section[0].astext().endswith("Summary")
        ),
        None,
    )
    if not in_code or summary is None:
        return
    paragraph = nodes.paragraph(classes=["pytorch-apis"])
    paragraph += nodes.Text("PyTorch documentation of the other APIs this chapter's code uses: ")
    for k, (name, url) in enumerate(sorted(in_code.items())):
        if k:
            paragraph += nodes.Text(", ")
        paragraph += _pytorch_link(name, url)
    paragraph += nodes.Text(".")
    summary += paragraph


def setup(app: Sphinx) -> dict:
    app.setup_extension("parallel_execution")  # book/_ext/parallel_execution.py
    app.connect("config-inited", invalidate_cache_on_package_change)
    app.connect("env-get-outdated", reread_all_on_package_change)
    app.connect("build-finished", write_package_stamp)
    app.connect("env-before-read-docs", make_wheel, priority=950)  # after the chapters ran
    app.connect("build-finished", publish_wheel)
    app.add_config_value("dnncourse_notebooks_branch", "notebooks", "html")
    app.connect("html-page-context", dedupe_scripts)
    app.connect("html-page-context", fix_notebook_links, priority=900)
    app.connect("html-page-context", homework_links)
    app.connect("doctree-resolved", link_pytorch_apis)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
