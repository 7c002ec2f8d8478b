"""MyST markdown turned into the plain Markdown that Jupyter, JupyterLab and Colab render.

A chapter's downloadable notebook is its MyST source executed; its markdown cells still hold
MyST directives (```` ```{exercise} ````, ```` ```{prf:algorithm} ````, admonitions) and roles
(``{cite:p}`key` ``, ``{doc}`04_sgd` ``, ``{numref}`fig-x` ``), which a notebook shows raw.
:func:`plain_notebook` rewrites them:

* admonitions, algorithms and exercises become block quotes with a bold title;
* a ``{solution}`` directive becomes a folded ``<details>`` block; a gated solution
  (``solution-start`` ... ``solution-end``, spanning code cells) keeps its code: its prose is
  folded in ``<details>`` blocks and its code cells are collapsed (JupyterLab's
  ``jupyter.source_hidden``, Colab's form view under a ``# @title``), so that the reader can
  run and read the solution but no solution is in plain view;
* citations become author-year text (from the book's ``.bib`` files), ``{doc}`` a link to the
  sibling notebook, ``{numref}``/``{ref}``/``{prf:ref}`` the text the book shows, and a
  ``{glue:text}`` or ``{glue}`` role the value the notebook's code glued (``Resolver.glue``);
* target labels ``(name)=`` and MyST comments ``% ...`` are dropped;
* the first inline mention of a PyTorch API (```torch.optim.SGD```, ```nn.Dropout(p)```)
  becomes a link to its page in PyTorch's documentation (:func:`pytorch_doc_url`, also used
  by the book's pages).

:data:`MYST_MARKUP` finds what is left; the book's tests use it on every download.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from myst_nb.core.variables import format_plain_text

MYST_MARKUP = re.compile(r"^\s*(`{3,}|:{3,})\{[\w:-]+\}|\{[\w:-]+\}`[^`]*`", re.M)
"""A MyST directive fence or role; plain Markdown never holds one."""

_FENCE = re.compile(r"^(`{3,}|:{3,})\{([\w:-]+)\}[ \t]*(.*)$")
_ROLE = re.compile(r"\{([\w:-]+)\}`([^`]*)`")
_EXPLICIT = re.compile(r"^(.*?)\s*<([^<>]+)>$", re.S)
_LABEL_LINE = re.compile(r"^\([\w:.-]+\)=\s*$")
SOLUTION_NOTE = "**Solution** (folded below; its code cells are collapsed: expand them to read)"
SOLUTION_TITLE = "# @title Solution code (collapsed: show the code to read it)"


PYTORCH_DOCS = "https://docs.pytorch.org/docs/stable/"
_API = re.compile(r"^(?:torch|nn|F)(?:\.[A-Za-z_]\w*)+(?=\(.*\)$|$)")
_ALIASES = {"nn": "torch.nn", "F": "torch.nn.functional"}
# modules whose members are documented on the module's own page, not a generated one
_MODULE_PAGES = {
    "torch.nn.init": "nn.init.html",
    "torch.testing": "testing.html",
    "torch.nn": "nn.html",
    "torch.nn.functional": "nn.functional.html",
    "torch.optim": "optim.html",
    "torch.optim.lr_scheduler": "optim.html#how-to-adjust-learning-rate",
    "torch.autograd": "autograd.html",
    "torch.random": "random.html",
}


def _resolve(name: str):
    """The object ``name`` names (``torch.optim.SGD``), or None if there is none."""
    module, *rest = name.split(".")
    obj = importlib.import_module(module)
    for part in rest:
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        except (ImportError, AttributeError):
            return None
    return obj


def pytorch_doc_url(text: str) -> tuple[str, str] | None:
    """``(full name, URL)`` of PyTorch's documentation for an API written as inline code.

    ``torch.optim.SGD``, ``nn.Dropout(p=0.2)`` and ``F.relu`` name APIs (``nn`` and ``F``
    as the chapters import them); the name must exist in the installed torch. Classes and
    functions have a generated page each; members of ``torch.nn.init`` and
    ``torch.testing`` an anchor on their module's page; a method an anchor on its class's.
    """
    match = _API.match(text.strip())
    if match is None:
        return None
    head, _, tail = match.group(0).partition(".")
    name = f"{_ALIASES.get(head, head)}.{tail}"
    try:
        obj = _resolve(name)
    except ImportError:
        return None
    if obj is None:
        return None
    if inspect.ismodule(obj):
        page = _MODULE_PAGES.get(name)
        return (name, PYTORCH_DOCS + page) if page else None
    if not callable(obj):  # a constant (torch.float32, torch.pi): no page of its own
        return None
    parent, _, _ = name.rpartition(".")
    if parent in {"torch.nn.init", "torch.testing", "torch.random"}:
        return name, f"{PYTORCH_DOCS}{_MODULE_PAGES[parent]}#{name}"
    owner = _resolve(parent)
    if inspect.isclass(owner) and parent != "torch.Tensor":  # Tensor methods: own pages
        return name, f"{PYTORCH_DOCS}generated/{parent}.html#{name}"
    return name, f"{PYTORCH_DOCS}generated/{name}.html"


_INLINE_CODE = re.compile(r"(?<![`\[])`([^`\n]+)`(?![`\]])")


def _link_apis(line: str, resolver: Resolver) -> str:
    """The first mention of each PyTorch API in inline code becomes a link to its docs."""

    def link(match: re.Match) -> str:
        found = pytorch_doc_url(match.group(1))
        if found is None or found[0] in resolver.linked:
            return match.group(0)
        resolver.linked.add(found[0])
        return f"[{match.group(0)}]({found[1]})"

    return _INLINE_CODE.sub(link, line)


@dataclass
class Resolver:
    """The text the book shows for a cross-reference (callables given by the extension)."""

    cite: Callable[[list[str], bool], str] = lambda keys, textual: ", ".join(keys)
    doc: Callable[[str], tuple[str, str]] = lambda target: (target, f"{target}.ipynb")
    numref: Callable[[str], str] = lambda label: label
    ref: Callable[[str], str] = lambda label: label
    glue: dict[str, str] = field(default_factory=dict)
    linked: set[str] = field(default_factory=set)  # PyTorch APIs linked so far
    counters: dict[str, int] = field(default_factory=dict)

    def number(self, kind: str) -> int:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        return self.counters[kind]


def _role(match: re.Match, resolver: Resolver) -> str:
    name, content = match.group(1), match.group(2)
    explicit = _EXPLICIT.match(content)
    title, target = (explicit.group(1), explicit.group(2)) if explicit else (None, content)
    if name.startswith("cite"):
        keys = [k.strip() for k in target.split(",") if k.strip()]
        return resolver.cite(keys, name in {"cite:t", "cite:ts"})
    if name == "doc":
        doc_title, href = resolver.doc(target)
        return f"[{title or doc_title}]({href})"
    if name in {"numref", "prf:ref", "ref", "eq"}:
        return title or (resolver.numref if name == "numref" else resolver.ref)(target)
    if name == "math":
        return f"${content}$"
    if name in {"glue", "glue:text", "glue:any"}:
        key, spec = content, ""
        if name == "glue:text" and ":" in content:
            key, spec = content.rsplit(":", 1)
        if key not in resolver.glue:
            raise KeyError(f"nothing was glued under {key!r}")
        return format_plain_text(resolver.glue[key], spec)
    return f"`{content}`"  # an unknown role: show its content as code


def _quote(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in text.strip("\n").splitlines())


def _split_options(body: list[str]) -> tuple[dict[str, str], list[str]]:
    options = {}
    while body and re.match(r"^:[\w-]+:", body[0]):
        key, _, value = body.pop(0)[1:].partition(":")
        options[key] = value.strip()
    return options, body


def _directive(name: str, arg: str, body: str, resolver: Resolver) -> str | None:
    """Plain Markdown for one directive; None for a gated solution-start/end."""
    if name in {"solution-start", "solution-end", "exercise-start", "exercise-end"}:
        return None
    if name in {"bibliography", "tableofcontents"}:
        return ""
    if name == "solution":
        return f"<details>\n<summary>Solution</summary>\n\n{body.strip()}\n\n</details>"
    if name == "exercise":
        head = f"**Exercise {resolver.number('exercise')}**" + (f" ({arg})" if arg else "")
        return _quote(f"{head}\n\n{body.strip()}")
    if name == "prf:algorithm":
        head = f"**Algorithm {resolver.number('algorithm')}**" + (f" ({arg})" if arg else "")
        return _quote(f"{head}\n\n{body.strip()}")
    if name in {"math", "prf:equation"}:
        return f"$$\n{body.strip()}\n$$"
    head = arg or name.replace("prf:", "").capitalize()  # admonition, note, tip, ...
    return _quote(f"**{head}**\n\n{body.strip()}")


def plain_markdown(text: str, resolver: Resolver) -> tuple[str, list[str]]:
    """Rewrite one markdown cell; also return the gated markers met ("solution-start", ...)."""
    lines, out, markers, i = text.splitlines(), [], [], 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            close = re.compile(rf"^{re.escape(fence.group(1))}\s*$")
            j = i + 1
            while j < len(lines) and not close.match(lines[j]):
                j += 1
            _options, body = _split_options(lines[i + 1 : j])
            name = fence.group(2)
            inner, inner_markers = plain_markdown("\n".join(body), resolver)
            markers += inner_markers
            rendered = _directive(name, fence.group(3).strip(), inner, resolver)
            if rendered is None:
                markers.append(name)
                out.append(f"\0{name}\0")
            elif rendered:
                out.append(rendered)
            i = j + 1
            continue
        if _LABEL_LINE.match(line) or re.match(r"^%( |$)", line):
            i += 1
            continue
        if line.startswith(("```", "~~~")):  # an ordinary code block: copied as it is
            j = i + 1
            while j < len(lines) and not lines[j].startswith(line[:3]):
                j += 1
            out.extend(lines[i : j + 1])
            i = j + 1
            continue
        out.append(_link_apis(_ROLE.sub(lambda m: _role(m, resolver), line), resolver))
        i += 1
    return "\n".join(out), markers


def glued(nb: dict) -> dict[str, str]:
    """What the notebook's code glued (myst-nb ``glue``): name -> its ``text/plain``."""
    values = {}
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is None:
                continue
            for mime, value in output.get("data", {}).items():
                if mime.endswith("text/plain"):
                    values[name] = "".join(value) if isinstance(value, list) else value
    return values


def _fold(text: str, continued: bool) -> str:
    summary = "Solution (continued)" if continued else "Solution"
    return f"<details>\n<summary>{summary}</summary>\n\n{text.strip()}\n\n</details>"


def _collapse(cell: dict) -> None:
    """Hide a solution's code: JupyterLab folds the input, Colab shows only the title."""
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    if not source.startswith("# @title"):
        cell["source"] = f"{SOLUTION_TITLE}\n{source}"
    metadata = cell.setdefault("metadata", {})
    metadata.setdefault("jupyter", {})["source_hidden"] = True
    metadata["cellView"] = "form"


def plain_notebook(nb: dict, resolver: Resolver) -> dict:
    """Rewrite every markdown cell of a notebook (a dict in nbformat 4) in place; return it.

    Between a ``solution-start`` and its ``solution-end`` the prose is folded in
    ``<details>`` and the code cells are collapsed (see the module docstring); the values
    the code glued fill the ``glue`` roles.
    """
    resolver.glue = {**glued(nb), **resolver.glue}
    cells, inside, folded = [], False, 0
    for cell in nb["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] != "markdown":
            if inside and cell["cell_type"] == "code":
                _collapse(cell)
            cells.append(cell)
            continue
        text, _ = plain_markdown(source, resolver)
        kept = []
        for part in re.split(r"(\0[\w-]+\0)", text):
            if part == "\0solution-start\0":
                inside, folded = True, 0
                kept.append(SOLUTION_NOTE)
            elif part == "\0solution-end\0":
                inside = False
            elif not part.startswith("\0") and part.strip():
                if inside:
                    kept.append(_fold(part, continued=folded > 0))
                    folded += 1
                else:
                    kept.append(part)
        text = "\n\n".join(p.strip("\n") for p in kept if p.strip())
        if text.strip():
            cell["source"] = text
            cells.append(cell)
    nb["cells"] = cells
    return nb
