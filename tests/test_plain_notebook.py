"""The download converter (book/_ext/plain_notebook.py): MyST in, plain Markdown out.

Runs on every chapter's source through jupytext (no book build): no directive or role is
left, solutions are folded or gone, citations and cross-references become text.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

from plain_notebook import (  # noqa: E402
    MYST_MARKUP,
    SOLUTION_NOTE,
    Resolver,
    plain_markdown,
    plain_notebook,
)

CHAPTERS = sorted(ROOT.glob("book/[0-9][0-9]_*.md"))


def _resolver() -> Resolver:
    return Resolver(
        cite=lambda keys, textual: ("T:" if textual else "P:") + "+".join(keys),
        doc=lambda target: (f"Title of {target}", f"{target}.ipynb"),
        numref=lambda label: f"Fig. <{label}>",
        ref=lambda label: f"Section <{label}>",
    )


def test_directives_and_roles():
    text = """(sec-x)=
% a comment
```{admonition} Learning objectives
:class: tip

See {cite:p}`a,b` and {cite:t}`c`, {doc}`04_sgd`, {numref}`fig-1`,
{ref}`the exercises <ex-1>` and {doc}`this chapter <05_x>`.
```

```{exercise}
:label: ex-1

Do it.
```

```{solution} ex-1
:class: dropdown

The answer.
```

```python
x = {"keep": "{cite:p}`this` inside code"}
```"""
    out, markers = plain_markdown(text, _resolver())
    assert markers == []
    assert "(sec-x)=" not in out and "a comment" not in out
    assert "> **Learning objectives**" in out
    assert "See P:a+b and T:c, [Title of 04_sgd](04_sgd.ipynb), Fig. <fig-1>," in out
    assert "the exercises and [this chapter](05_x.ipynb)." in out
    assert "> **Exercise 1**\n>\n> Do it." in out
    assert "<details>\n<summary>Solution</summary>\n\nThe answer.\n\n</details>" in out
    assert 'x = {"keep": "{cite:p}`this` inside code"}' in out  # code blocks untouched


def test_gated_solution_with_code_cells_is_removed():
    def md(text):
        return {"cell_type": "markdown", "metadata": {}, "source": text}

    def code(text):
        return {"cell_type": "code", "metadata": {}, "source": text, "outputs": []}

    nb = {
        "cells": [
            md(
                "```{exercise}\n:label: ex-a\n\nCompute it.\n```\n\n"
                "```{solution-start} ex-a\n:class: dropdown\n```\n\nWe compute:"
            ),
            code("secret = 42"),
            md("```{solution-end}\n```\n\n## Next"),
            code("visible = 1"),
        ]
    }
    plain_notebook(nb, _resolver())
    sources = [c["source"] for c in nb["cells"]]
    assert sources[0].startswith("> **Exercise 1**") and sources[0].endswith(SOLUTION_NOTE)
    assert "We compute" not in sources[0]
    assert sources[1:] == ["## Next", "visible = 1"]


def test_glued_values_are_pasted_as_the_book_formats_them():
    """{glue:text}`key:spec` becomes the value the executed notebook glued (myst-nb's glue)."""

    def glued(name, text):
        return {
            "output_type": "display_data",
            "metadata": {
                "scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}
            },
            "data": {"application/papermill.record/text/plain": text},
        }

    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {}, "source": "glue(...)",
             "outputs": [glued("gap", "0.0123456"), glued("k", "12"), glued("p", "0.4817")]},
            {"cell_type": "markdown", "metadata": {},
             "source": "gap {glue:text}`gap:.2e` at step {glue:text}`k`, "
                       "{glue:text}`p:.0%` wrong, {glue:text}`missing:.1f`"},
        ]
    }  # fmt: skip
    plain_notebook(nb, _resolver())
    text = nb["cells"][1]["source"]
    assert text == "gap 1.23e-02 at step 12, 48% wrong, `missing:.1f`", text
    assert not MYST_MARKUP.search(text)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_becomes_plain_markdown(path):
    nb = plain_notebook(jupytext.read(path), _resolver())
    markdown = "\n".join(c["source"] for c in nb.cells if c.cell_type == "markdown")
    left = [m.group(0) for m in MYST_MARKUP.finditer(markdown)]
    assert not left, f"{path.name}: MyST left in the download: {left[:5]}"
    source = path.read_text(encoding="utf8")
    if "{exercise}" in source:
        assert "**Exercise 1**" in markdown
    if "{cite:" in source:
        assert "P:" in markdown or "T:" in markdown
    # a folded solution opens only inside <details>; a gated one is gone
    assert markdown.count("<summary>Solution</summary>") == source.count("```{solution}")
    assert markdown.count(SOLUTION_NOTE) == source.count("{solution-start}")


def test_package_hash_follows_code_and_figure_style(tmp_path):
    """The book's cache is emptied when the package's code or figure style changes."""
    from dnncourse_book import _package_hash

    module, style = tmp_path / "m.py", tmp_path / "book.mplstyle"
    module.write_text('def f():\n    """Doc."""\n    return 1\n')
    style.write_text("font.size: 12\n")
    before = _package_hash([str(tmp_path)])
    module.write_text('def f():  # a comment\n    """Another doc."""\n    return 1\n')
    assert _package_hash([str(tmp_path)]) == before, "docstrings and comments count"
    module.write_text('def f():\n    """Doc."""\n    return 2\n')
    changed_code = _package_hash([str(tmp_path)])
    assert changed_code != before, "a code change went unnoticed"
    style.write_text("font.size: 8\n")
    assert _package_hash([str(tmp_path)]) != changed_code, "a style change went unnoticed"
