"""The download converter (book/_ext/plain_notebook.py): MyST in, plain Markdown out.

Runs on every chapter's source through jupytext (no book build): no directive or role is
left, solutions are folded (their code collapsed, never dropped), citations,
cross-references and glued values become text.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

from plain_notebook import (  # noqa: E402
    MYST_MARKUP,
    SOLUTION_NOTE,
    SOLUTION_TITLE,
    Resolver,
    plain_markdown,
    plain_notebook,
    pytorch_doc_url,
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


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text, outputs=()):
    return {"cell_type": "code", "metadata": {}, "source": text, "outputs": list(outputs)}


def test_gated_solution_keeps_its_code_collapsed_and_its_prose_folded():
    nb = {
        "cells": [
            _md(
                "```{exercise}\n:label: ex-a\n\nCompute it.\n```\n\n"
                "```{solution-start} ex-a\n:class: dropdown\n```\n\nWe compute:"
            ),
            _code("secret = 42"),
            _md("Which is the answer.\n\n```{solution-end}\n```\n\n## Next"),
            _code("visible = 1"),
        ]
    }
    plain_notebook(nb, _resolver())
    cells = nb["cells"]
    assert cells[0]["source"].startswith("> **Exercise 1**\n>\n> Compute it.")
    assert cells[0]["source"].endswith(
        SOLUTION_NOTE + "\n\n<details>\n<summary>Solution</summary>\n\nWe compute:\n\n</details>"
    )
    solution = cells[1]
    assert solution["source"].splitlines() == [SOLUTION_TITLE, "secret = 42"], "code kept"
    assert solution["metadata"]["jupyter"]["source_hidden"] is True, "JupyterLab folds it"
    assert solution["metadata"]["cellView"] == "form", "Colab shows only its title"
    assert cells[2]["source"] == (
        "<details>\n<summary>Solution (continued)</summary>\n\nWhich is the answer."
        "\n\n</details>\n\n## Next"
    )
    assert cells[3] == _code("visible = 1"), "code after the solution is left alone"


def test_glue_roles_show_the_glued_values():
    """{glue:text}`key:fmt` is formatted as myst-nb formats it; {glue}`key` as it is."""
    glue_output = {
        "output_type": "display_data",
        "metadata": {"scrapbook": {"name": "acc", "mime_prefix": "application/papermill"}},
        "data": {"application/papermilltext/plain": "0.89693"},
    }
    nb = {
        "cells": [
            _code("glue('acc', 0.89693, display=False)", [glue_output]),
            _md("Accuracy {glue:text}`acc:.3f`, or {glue:text}`acc`, or {glue}`acc`."),
        ]
    }
    plain_notebook(nb, _resolver())
    assert nb["cells"][1]["source"] == "Accuracy 0.897, or 0.89693, or 0.89693."
    with pytest.raises(KeyError, match="missing"):
        plain_markdown("{glue:text}`missing:.2f`", _resolver())


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_becomes_plain_markdown(path):
    source = path.read_text(encoding="utf8")
    resolver = _resolver()  # the values are glued when the book runs the chapter
    keys = re.findall(r"\{glue(?::\w+)?\}`([^`:]+)", source)
    resolver.glue = {key: "1.0" for key in keys}
    nb = plain_notebook(jupytext.read(path), resolver)
    markdown = "\n".join(c["source"] for c in nb.cells if c.cell_type == "markdown")
    left = [m.group(0) for m in MYST_MARKUP.finditer(markdown)]
    assert not left, f"{path.name}: MyST left in the download: {left[:5]}"
    if "{exercise}" in source:
        assert "**Exercise 1**" in markdown
    if "{cite:" in source:
        assert "P:" in markdown or "T:" in markdown
    # a solution opens only inside <details>; a gated one keeps its code, collapsed
    gated = source.count("{solution-start}")
    assert markdown.count(SOLUTION_NOTE) == gated
    folded = markdown.count("<summary>Solution</summary>")
    assert source.count("```{solution}") <= folded <= source.count("```{solution}") + gated
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) == len(jupytext.read(path).cells) - sum(
        c.cell_type == "markdown" for c in jupytext.read(path).cells
    ), "a code cell went missing"
    hidden = [c for c in code if c.metadata.get("jupyter", {}).get("source_hidden")]
    assert bool(hidden) == bool(gated), f"{path.name}: solution code is not collapsed"


def test_pytorch_apis_link_to_their_pages():
    """Classes and functions have pages; methods and module members anchors; a constant
    or an unknown name nothing. Only the first mention in a notebook is linked."""
    base = "https://docs.pytorch.org/docs/stable/"
    assert pytorch_doc_url("nn.Dropout(p=0.2)") == (
        "torch.nn.Dropout",
        base + "generated/torch.nn.Dropout.html",
    )
    assert pytorch_doc_url("F.relu")[1] == base + "generated/torch.nn.functional.relu.html"
    assert pytorch_doc_url("torch.nn.init.kaiming_normal_")[1] == (
        base + "nn.init.html#torch.nn.init.kaiming_normal_"
    )
    assert pytorch_doc_url("torch.nn.Module.state_dict")[1] == (
        base + "generated/torch.nn.Module.html#torch.nn.Module.state_dict"
    )
    for text in ("torch.float32", "torch.nope", "model.eval()", "nn", "x"):
        assert pytorch_doc_url(text) is None, text
    out, _ = plain_markdown("`torch.optim.SGD`, again `torch.optim.SGD`", _resolver())
    assert out == (
        f"[`torch.optim.SGD`]({base}generated/torch.optim.SGD.html), again `torch.optim.SGD`"
    )


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
