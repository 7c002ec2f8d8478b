"""MyST markdown turned into the plain Markdown that Jupyter, JupyterLab and Colab render.

A chapter's downloadable notebook is its MyST source executed; its markdown cells still hold
MyST directives (```` ```{exercise} ````, ```` ```{prf:algorithm} ````, admonitions) and roles
(``{cite:p}`key` ``, ``{doc}`04_sgd` ``, ``{numref}`fig-x` ``), which a notebook shows raw.
:func:`plain_notebook` rewrites them:

* admonitions, algorithms and exercises become block quotes with a bold title;
* a ``{solution}`` directive becomes a folded ``<details>`` block; a gated solution
  (``solution-start`` ... ``solution-end``, spanning code cells) is removed, with a pointer to
  the online book, so that no solution is in plain view;
* citations become author-year text (from the book's ``.bib`` files), ``{doc}`` a link to the
  sibling notebook, ``{numref}``/``{ref}``/``{prf:ref}`` the text the book shows;
* target labels ``(name)=`` and MyST comments ``% ...`` are dropped;
* a glued number (``{glue:text}`key:.2f` ``, myst-nb's ``glue``) becomes the value the
  chapter glued (``Resolver.glue``, filled by the extension from myst-nb's glue file and
  from the notebook's own outputs), formatted as myst-nb formats it.

:data:`MYST_MARKUP` finds what is left; the book's tests use it on every download.
"""

from __future__ import annotations

import re
from ast import literal_eval
from collections.abc import Callable
from dataclasses import dataclass, field

MYST_MARKUP = re.compile(r"^\s*(`{3,}|:{3,})\{[\w:-]+\}|\{[\w:-]+\}`[^`]*`", re.M)
"""A MyST directive fence or role; plain Markdown never holds one."""

_FENCE = re.compile(r"^(`{3,}|:{3,})\{([\w:-]+)\}[ \t]*(.*)$")
_ROLE = re.compile(r"\{([\w:-]+)\}`([^`]*)`")
_EXPLICIT = re.compile(r"^(.*?)\s*<([^<>]+)>$", re.S)
_LABEL_LINE = re.compile(r"^\([\w:.-]+\)=\s*$")
SOLUTION_NOTE = "*The solution, with its code, is in the online book.*"


@dataclass
class Resolver:
    """The text the book shows for a cross-reference (callables given by the extension)."""

    cite: Callable[[list[str], bool], str] = lambda keys, textual: ", ".join(keys)
    doc: Callable[[str], tuple[str, str]] = lambda target: (target, f"{target}.ipynb")
    numref: Callable[[str], str] = lambda label: label
    ref: Callable[[str], str] = lambda label: label
    counters: dict[str, int] = field(default_factory=dict)
    glue: dict[str, str] = field(default_factory=dict)  # key: text/plain of the value

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
    if name in {"glue", "glue:", "glue:text", "glue:any"}:
        key, _, spec = content.rpartition(":") if ":" in content else (content, "", "")
        if key in resolver.glue:
            return _format_glued(resolver.glue[key], spec)
    return f"`{content}`"  # an unknown role: show its content as code


def _format_glued(text: str, spec: str) -> str:
    """A glued value as myst-nb's ``{glue:text}`` prints it (``format`` by type character)."""
    try:
        value = literal_eval(text)
    except (SyntaxError, ValueError):
        value = text
    if spec and spec[-1] in "bcdoxX":
        value = int(value)
    elif spec and spec[-1] in "eEfFgGn%":
        value = float(value)
    return format(value, spec) if spec else str(value)


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
        out.append(_ROLE.sub(lambda m: _role(m, resolver), line))
        i += 1
    return "\n".join(out), markers


def plain_notebook(nb: dict, resolver: Resolver) -> dict:
    """Rewrite every markdown cell of a notebook (a dict in nbformat 4) in place; return it.

    Cells between a ``solution-start`` and its ``solution-end`` (markdown or code) are
    dropped and replaced by :data:`SOLUTION_NOTE`.
    """
    for cell in nb["cells"]:  # the values glued by the executed code (myst-nb's glue)
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            data = output.get("data", {})
            plain = [v for k, v in data.items() if k.endswith("text/plain")]
            if name and plain:
                resolver.glue[name] = "".join(plain[0])
    cells, inside = [], False
    for cell in nb["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] != "markdown":
            if not inside:
                cells.append(cell)
            continue
        text, _ = plain_markdown(source, resolver)
        kept = []
        for part in re.split(r"(\0[\w-]+\0)", text):
            if part == "\0solution-start\0":
                inside = True
                kept.append(SOLUTION_NOTE)
            elif part == "\0solution-end\0":
                inside = False
            elif not part.startswith("\0") and not inside:
                kept.append(part)
        text = "\n".join(p.strip("\n") for p in kept if p.strip())
        if text.strip():
            cell["source"] = text
            cells.append(cell)
    nb["cells"] = cells
    return nb
