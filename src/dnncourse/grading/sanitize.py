"""Turn whatever a student handed in into a notebook nbgrader can grade, or say why not.

Runs before nbgrader sees the file: nbgrader's own sanitizers (``DeduplicateIds``,
``OverwriteCells``) then run on the result. Here:

* find the notebook (by name; one notebook under another name is accepted and noted); a
  symbolic link (the notebook, or a folder on the way to it) is an ``invalid notebook``: it
  could point at another student's notebook or at the solution;
* read it: empty, truncated, undecodable, too deeply nested or non-notebook JSON is an
  ``invalid notebook``;
* rebuild it on the released notebook: every nbgrader cell of the release, in the release's
  order and with the release's metadata, the student's source only in answer cells; the
  student's own cells kept after the nbgrader cell they followed. So deleted, edited,
  duplicated or reordered test cells, changed ``points``/``grade`` metadata and duplicated
  cell ids all come out as the instructor wrote them; nbgrader's ``OverwriteCells`` then
  puts the hidden tests back from the gradebook.
"""

import copy
import json
import os
from collections import defaultdict
from pathlib import Path

import nbformat

from .protocol import Status

MAX_NOTEBOOK_BYTES = 50 * 2**20
MAX_DEPTH = 64  # a notebook is ~6 levels deep; outputs' JSON data a few more


class Rejected(Exception):
    """A submission that cannot be graded; ``status`` goes into grades.csv."""

    def __init__(self, status: Status, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _refuse_links(folder: Path, path: Path) -> None:
    """Raise :class:`Rejected` if ``path`` or a folder between ``folder`` and it is a link."""
    for part in [path, *path.parents]:
        if part.is_symlink():
            raise Rejected(Status.INVALID, f"{part.relative_to(folder.parent)} is a symbolic link")
        if part == folder:
            return


def find_notebook(folder: Path, name: str, expected: set[str]) -> tuple[Path, str | None]:
    """The file to grade for notebook ``name`` (``name.ipynb``) and a note if renamed."""
    _refuse_links(folder, folder)
    exact = folder / f"{name}.ipynb"
    if exact.is_symlink() or exact.is_file():
        _refuse_links(folder, exact)
        return exact, None
    candidates = sorted(
        p
        for p in folder.rglob("*.ipynb")
        if (p.is_symlink() or p.is_file())
        and ".ipynb_checkpoints" not in p.parts
        and p.stem not in expected
    )
    for candidate in candidates:
        _refuse_links(folder, candidate)
    if len(candidates) == 1 and len(expected) == 1:
        found = candidates[0]
        return found, f"graded {found.relative_to(folder)} in place of {name}.ipynb"
    listed = ", ".join(str(p.relative_to(folder)) for p in candidates) or "no notebook"
    raise Rejected(Status.MISSING, f"{name}.ipynb not found ({listed} in the folder)")


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Parse a notebook file; raise :class:`Rejected` with a clear reason if it is not one."""
    try:  # O_NOFOLLOW: a link put in place after find_notebook looked is refused too
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise Rejected(Status.INVALID, f"{path.name} cannot be read ({error})") from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise Rejected(Status.INVALID, f"{path.name} is empty")
        if size > MAX_NOTEBOOK_BYTES:
            raise Rejected(Status.INVALID, f"{path.name} is {size / 2**20:.0f} MiB")
        raw = f.read(MAX_NOTEBOOK_BYTES + 1)
    try:
        data = json.loads(raw)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # lone surrogates ("\ud800")
    except (ValueError, UnicodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise Rejected(Status.INVALID, f"{path.name} is not valid JSON ({reason})") from None
    if _depth(data) > MAX_DEPTH:
        raise Rejected(Status.INVALID, f"{path.name} is nested more than {MAX_DEPTH} deep")
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise Rejected(Status.INVALID, f"{path.name} is JSON but not a notebook")
    for cell in data["cells"]:
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise Rejected(Status.INVALID, f"{path.name} has a cell that is not a cell")
        cell.pop("id", None)  # ids are reassigned by rebuild(); duplicates must not abort
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(map(str, cell["source"]))
        if not isinstance(cell.get("source", ""), str):
            raise Rejected(Status.INVALID, f"{path.name} has a cell without source text")
    data.setdefault("metadata", {})
    data["nbformat"], data["nbformat_minor"] = 4, 4
    try:
        return nbformat.from_dict(data)
    except Exception as error:  # nbformat raises several kinds on malformed input
        raise Rejected(Status.INVALID, f"{path.name}: {error}") from None


def _depth(data) -> int:
    """How deeply ``data`` nests (without recursion, so any depth is measured safely)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
    return deepest


def grade_id(cell) -> str | None:
    gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    return gid if isinstance(gid, str) else None


def _is_answer(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("solution"))


def _differs(cell, release_cell) -> bool:
    """Did the student change an instructor cell (its source or its grading metadata)?"""
    mine = cell.get("metadata", {}).get("nbgrader", {})
    theirs = release_cell.metadata.get("nbgrader", {})
    keys = ("grade", "solution", "locked", "task", "points")
    return (
        cell.get("source", "") != release_cell.source
        or cell.get("cell_type") != release_cell.cell_type
        or any(mine.get(k) != theirs.get(k) for k in keys)
    )


def _plain(cell, index: int) -> nbformat.NotebookNode:
    """A student's own cell: no nbgrader metadata, a fresh deterministic id."""
    source = cell.get("source", "")
    if cell.cell_type == "code":
        new = nbformat.v4.new_code_cell(source)
    elif cell.cell_type == "markdown":
        new = nbformat.v4.new_markdown_cell(source)
    else:
        new = nbformat.v4.new_raw_cell(source)
    new.id = f"student-{index}"
    return new


def rebuild(student, release) -> tuple[nbformat.NotebookNode, list[str]]:
    """The release notebook with the student's answers and extra cells; and what changed."""
    known = {grade_id(c): c for c in release.cells if grade_id(c)}
    notes, answers, seen = [], {}, set()
    extras, anchor = defaultdict(list), None
    for index, cell in enumerate(student.cells):
        gid = grade_id(cell)
        if gid in known and gid not in seen:
            seen.add(gid)
            anchor = gid
            if _is_answer(known[gid]):
                answers[gid] = cell.get("source", "")
            elif _differs(cell, known[gid]):
                notes.append(f"restored the instructor's cell {gid}")
            continue
        if gid in known:
            if _is_answer(known[gid]):
                notes.append(f"a copy of answer cell {gid} was kept as an ordinary cell")
                extras[anchor].append(_plain(cell, index))
            else:
                notes.append(f"removed a copy of cell {gid}")
            continue
        if gid is not None or cell.get("metadata", {}).get("nbgrader"):
            notes.append(f"removed nbgrader metadata from a cell of the student ({gid})")
        extras[anchor].append(_plain(cell, index))
    cells = list(extras[None])
    for cell in release.cells:
        gid = grade_id(cell)
        if gid is None:
            continue
        new = copy.deepcopy(cell)
        if gid in answers:
            new.source = answers[gid]
        elif gid not in seen:
            what = "the unanswered stub" if _is_answer(cell) else "the instructor's cell"
            notes.append(f"cell {gid} was missing: {what} was put back")
        cells.append(new)
        cells.extend(extras[gid])
    nb = copy.deepcopy(release)
    nb.cells = cells
    return nb, notes
