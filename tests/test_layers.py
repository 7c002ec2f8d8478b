"""The grading package's layers, read from the import statements (no module is imported).

The design (``DESIGN.md``, "Grading: the trust boundary"): ``dnncourse grade`` and the
service enter grading through one engine session, and nothing above the engine reaches into
the worker; the worker grades from the bundle and never opens the gradebook (``course.py``).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dnncourse"


def imported(path: Path, root: Path) -> set[str]:
    """The ``dnncourse`` modules ``path`` imports (anywhere in it), as dotted names."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            tail = [node.module] if node.module else []
            module = ".".join(base + tail) if node.level else node.module
            for alias in node.names:  # `from . import worker` names a module too
                found.add(f"{module}.{alias.name}")
            found.add(module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("dnncourse.")}


def grading_modules_imported_by(folder: str, root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module of ``root/folder`` -> the modules of ``root/grading`` it imports."""
    modules = {p.stem for p in (root / "grading").glob("*.py")}
    return {
        path.stem: {
            name.split(".")[2]
            for name in imported(path, root)
            if name.startswith("dnncourse.grading.") and name.split(".")[2] in modules
        }
        for path in sorted((root / folder).glob("*.py"))
    }


def test_the_service_does_not_reach_into_the_worker():
    reached = grading_modules_imported_by("service")
    assert not [m for m, names in reached.items() if "worker" in names], reached
    # the door: the service grades through the engine; the rest of it reads types only
    assert reached["grader"] >= {"engine"}, reached["grader"]


def test_only_the_engine_imports_the_worker_and_the_worker_not_the_gradebook():
    reached = grading_modules_imported_by("grading")
    assert "course" not in reached["worker"], reached["worker"]
    importers = sorted(m for m, names in reached.items() if "worker" in names and m != "worker")
    assert importers == ["engine"], importers


def test_the_checker_sees_an_import_of_the_worker(tmp_path):
    """The test above can fail: a service module importing the worker is seen."""
    fake = tmp_path / "dnncourse"
    (fake / "service").mkdir(parents=True)
    (fake / "grading").mkdir()
    (fake / "grading" / "worker.py").write_text("")
    (fake / "service" / "grader.py").write_text(
        "from ..grading.worker import kill_tree\nfrom ..grading import engine\n"
    )
    assert grading_modules_imported_by("service", fake) == {"grader": {"worker"}}
