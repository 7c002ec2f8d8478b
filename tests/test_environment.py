"""The pip lock and the conda environment pin the same versions; the package installs.

A pin may hold for some Pythons only (an environment marker: ``pkg==1.0; python_version <
"3.13"``): the two files must agree on the markers too, and this interpreter must have the
version its markers choose.
"""

import json
import re
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging import tags
from packaging.markers import Marker
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

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


def index_files(name: str) -> list[dict]:
    """The files of ``name`` on PyPI's simple index (PEP 691 JSON: names, Requires-Python;
    no wheel is downloaded, torch's included)."""
    url = f"https://pypi.org/simple/{canonicalize_name(name)}/"
    request = urllib.request.Request(
        url, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["files"]


def why_not(python: str, version: str, files: list[dict]) -> str | None:
    """Why no wheel of ``version`` among ``files`` installs on ``python`` (on this platform),
    or None if one does."""
    full = Version(python)
    pythons = (full.major, full.minor)
    usable = set(tags.cpython_tags(pythons)) | set(tags.compatible_tags(pythons))
    why = "no wheel of it for this Python"
    for file in files:
        if not file["filename"].endswith(".whl"):
            continue
        _, got, _, wheel_tags = parse_wheel_filename(file["filename"])
        if got != Version(version):
            continue
        needs = file.get("requires-python")
        if needs and full not in SpecifierSet(needs):
            why = f"it needs Python {needs}"
        elif wheel_tags & usable:
            return None
    return why


@pytest.mark.slow
def test_the_lock_installs_on_each_python_named():
    """Every pin the markers choose for each Python the README names (Debian 12's 3.11.2, a
    3.12, Debian 13's 3.13) has a wheel for it whose Requires-Python admits it: read from the
    index's file list, without downloading a wheel (pip's resolver would download each to read
    its metadata: gigabytes of torch and CUDA). The lock is a complete freeze, so this is what
    can break between Pythons; both failures this lock once had are caught (the controls)."""
    low, high = python_range()
    for python in PYTHONS:
        version = tuple(map(int, python.split(".")))[:2]
        assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split(".")))
    wanted = sorted({line.split("==")[0] for py in PYTHONS for line in lock_for(py).split()})
    try:
        with ThreadPoolExecutor(8) as pool:
            files = dict(zip(wanted, pool.map(index_files, wanted), strict=True))
    except OSError as error:
        pytest.skip(f"PyPI's index is not reachable: {error}")
    failed = {}
    for python in PYTHONS:
        for line in lock_for(python).split():
            name, version = line.split("==")
            if why := why_not(python, version, files[name]):
                failed[f"{name}=={version} on {python}"] = why
    assert not failed, failed
    # controls: the two pins that broke the set-up before the markers
    assert why_not("3.11.2", "4.1.3", files["soupsieve"]) == "it needs Python >=3.11.5"
    assert why_not("3.13.0", "0.1.4", files["pgserver"]) == "no wheel of it for this Python"
