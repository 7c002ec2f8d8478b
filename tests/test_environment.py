"""The pip lock and the conda environment pin the same versions; the package installs.

A pin may hold for some Pythons only (an environment marker: ``pkg==1.0; python_version <
"3.13"``): the two files must agree on the markers too, and this interpreter must have the
version its markers choose.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*(?:-\s*)?([A-Za-z0-9_.\-]+)==([^\s#;]+)\s*(?:;\s*([^#]+?))?\s*$")


def pins(path: Path, here: bool = False) -> dict[str, str]:
    """Package -> pinned version (``version; marker`` for a pin with a marker); with
    ``here``, only the pins whose marker holds for this interpreter, without the marker."""
    found = {}
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            name, version, marker = match[1].lower().replace("_", "-"), match[2], match[3]
            if here:
                if marker is None or Marker(marker).evaluate():
                    found[name] = version
            else:
                key = name if marker is None else f"{name}; {Marker(marker)}"
                found[key] = version
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
    lock = pins(ROOT / "requirements-lock.txt", here=True)
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
    for name, pinned in pins(ROOT / "requirements-lock.txt", here=True).items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            wrong[name] = (pinned, "missing")
            continue
        if installed.split("+")[0] != pinned.split("+")[0]:
            wrong[name] = (pinned, installed)
    assert not wrong, f"installed versions differ from the lock (pinned, installed): {wrong}"


def test_every_line_of_the_lock_is_read():
    """A pin the parser above misses would escape both checks: none is missed."""
    for path in (ROOT / "requirements-lock.txt", ROOT / "environment.yml"):
        text = path.read_text()
        lines = [ln for ln in text.splitlines() if "==" in ln and not ln.lstrip().startswith("#")]
        assert len(lines) == len(pins(path)), path


REQUIRES = re.compile(r'^requires-python = ">=(\d+\.\d+),<(\d+\.\d+)"$', re.M)


def python_range() -> tuple[str, str]:
    return REQUIRES.search((ROOT / "pyproject.toml").read_text()).groups()


def test_readme_and_make_name_the_pythons_of_pyproject():
    low, high = python_range()  # ">=3.11,<3.14": 3.11 to 3.13
    last = f"{high.split('.')[0]}.{int(high.split('.')[1]) - 1}"
    assert f"Python {low} to {last}" in (ROOT / "README.md").read_text()
    here = subprocess.run(
        ["make", "-s", "python-version", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert here.returncode == 0, here.stdout + here.stderr
    # an interpreter outside the range: one line that names the range, before anything else
    outside = subprocess.run(
        ["make", "-s", "venv", f"PYTHON={sys.executable}", "REQUIRES=3.9 3.10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    said = [ln for ln in outside.stderr.splitlines() if not ln.startswith("make")]
    assert outside.returncode != 0 and outside.stdout == "", outside
    assert len(said) == 1 and said[0].startswith("dnncourse needs Python >=3.9,<3.10"), said


PYTHONS = ("3.11.2", "3.12.1", "3.13.0")  # Debian 12's, a 3.12, Debian 13's


def lock_for(python: str) -> str:
    """The lock's pins for ``python``, its markers evaluated (pip evaluates markers for the
    interpreter it runs on, even with ``--python-version``)."""
    env = {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python}
    lines = []
    for name, pinned in pins(ROOT / "requirements-lock.txt").items():
        name, _, marker = name.partition("; ")
        if not marker or Marker(marker).evaluate(env):
            lines.append(f"{name}=={pinned}\n")
    return "".join(lines)


def test_markers_choose_one_pin_of_each_package_for_every_python():
    for python in PYTHONS:
        names = [line.split("==")[0] for line in lock_for(python).splitlines()]
        assert len(names) == len(set(names)), python
    assert "pgserver==" not in lock_for("3.13.0") and "pgserver==" in lock_for("3.12.1")
    assert "soupsieve==3.0.1" in lock_for("3.11.2") and "soupsieve==4" in lock_for("3.11.7")


@pytest.mark.slow
def test_the_lock_resolves_on_each_python_named(tmp_path):
    """The pinned set installs on each Python the README names, proved by pip's resolver
    without downloading a wheel (``pip install --dry-run --python-version``: PyPI serves the
    wheels' metadata); the three resolutions run side by side."""
    low, high = python_range()
    for python in PYTHONS:
        version = tuple(map(int, python.split(".")))[:2]
        assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split(".")))

    def dry_run(python: str, requirements: str):
        folder = tmp_path / python
        folder.mkdir()
        (folder / "lock.txt").write_text(requirements)
        return subprocess.Popen(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
             "--only-binary=:all:", "--python-version", python, "--target", str(folder / "t"),
             "--quiet", "--disable-pip-version-check", "-r", str(folder / "lock.txt")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    six = pins(ROOT / "requirements-lock.txt")["six"]
    if dry_run("3.12", f"six=={six}\n").wait(timeout=300) != 0:
        pytest.skip("no package index reachable (pip resolves from PyPI's metadata)")
    runs = {python: dry_run(python, lock_for(python)) for python in PYTHONS}
    failed = {}
    for python, proc in runs.items():
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            failed[python] = out[-2000:]
    assert not failed, failed
