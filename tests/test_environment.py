"""The pip lock and the conda environment pin the same versions; the package installs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*(?:-\s*)?([A-Za-z0-9_.\-]+)==([^\s#]+)\s*$")


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            found[match[1].lower().replace("_", "-")] = match[2]
    return found


def test_lock_and_environment_yml_agree():
    lock, conda = pins(ROOT / "requirements-lock.txt"), pins(ROOT / "environment.yml")
    assert lock, "requirements-lock.txt pins nothing"
    assert lock == conda, {
        "only in the lock": sorted(lock.keys() - conda.keys()),
        "only in environment.yml": sorted(conda.keys() - lock.keys()),
        "different": sorted(k for k in lock.keys() & conda.keys() if lock[k] != conda[k]),
    }


def test_the_lock_pins_the_tools_the_course_promises():
    lock = pins(ROOT / "requirements-lock.txt")
    assert lock["torch"] == "2.13.0"
    assert lock["jupyter-book"].startswith("1.")
    assert lock["nbgrader"].startswith("0.9.")
    for name in ("numpy", "matplotlib", "scikit-learn", "pytest", "jupytext", "ruff"):
        assert name in lock, f"{name} is not pinned"
    for name in ("sphinx-exercise", "sphinx-proof", "tqdm", "selenium"):
        assert name in lock, f"{name} is not pinned"


def test_installed_versions_are_the_pinned_ones():
    from importlib.metadata import PackageNotFoundError, version

    wrong = {}
    for name, pinned in pins(ROOT / "requirements-lock.txt").items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            wrong[name] = (pinned, "missing")
            continue
        if installed.split("+")[0] != pinned.split("+")[0]:
            wrong[name] = (pinned, installed)
    assert not wrong, f"installed versions differ from the lock (pinned, installed): {wrong}"
