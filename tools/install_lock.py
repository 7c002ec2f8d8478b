"""Install the pinned environment (``requirements-lock.txt``) and the package into this venv.

Run by ``make`` (the recipe of ``.venv/.installed``, shared by ``make book`` and ``make
test``) with the new venv's interpreter: ``.venv/bin/python tools/install_lock.py``.

pip spends most of a fresh set-up unpacking some 200 wheels and compiling every module to
bytecode, one file at a time; uv (https://docs.astral.sh/uv/) installs the same wheels
in seconds. So the installer is uv, at the version the lock pins (the lock stays the one
source of pins: ``tests/test_environment.py``), bootstrapped into the venv with pip; where
that fails (no wheel of uv for the platform, no uv on the index) pip installs the lock as
before. ``DNNCOURSE_INSTALLER=pip`` chooses pip (the baseline of
``benchmarks/bench_book.py``).

uv must find the same wheels as pip, so it is given pip's own configuration (``pip config
list``: its files and ``PIP_*`` variables): the indexes, the ``find-links`` folders (on a
machine whose torch wheel lies on disk), the constraints and the certificate. pip merges
every index and takes the highest version that matches, so uv is told to do the same
(``--index-strategy unsafe-best-match``; uv otherwise stops at the first index that knows a
name). A pip option that could change what is installed and has no translation here makes
the installer pip. Markers (``; python_version < "3.13"``) are evaluated by both for the
venv's interpreter, and hashes in the lock would be checked by both.

pip also compiles every module it installs to bytecode; uv does not, and Python writes
bytecode on first import only where ``PYTHONDONTWRITEBYTECODE`` is unset (it is set on some
machines, this course's shared one included), so every kernel, grader and test process would
compile torch again from source (2-3 s of CPU each). Compiling all of the lock as pip does
costs more than the install itself, so the set-up imports once, with bytecode written, the
modules the book, the kernels (their preload, ``dnncourse.grading.kernel.PRELOAD``), the
grader and the tests import (:data:`WARM`); a module
left out still works, compiled in memory when imported.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"

# pip options (`pip config` names) and what they become for `uv pip install`
AS_FLAG = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}
AS_ENV = {
    "cert": "SSL_CERT_FILE",
    "timeout": "UV_HTTP_TIMEOUT",
    "default-timeout": "UV_HTTP_TIMEOUT",
}
# pip options that do not change what is installed
HARMLESS = {
    "disable-pip-version-check",
    "no-cache-dir",
    "cache-dir",
    "progress-bar",
    "quiet",
    "verbose",
    "no-color",
    "retries",
    "root-user-action",
    "no-input",
    "no-python-version-warning",
    "require-virtualenv",
}
# pip reads its settings in this order, the later overriding the earlier
SCOPES = ("global", "install", ":env:")


# What the chapters' kernels, the book's build, the grader and the tests import (the heavy
# part: its dependencies come with each): its bytecode is written at set-up.
WARM = (
    "dnncourse",  # then the kernel's preload, dnncourse.grading.kernel.PRELOAD (WARM_CODE)
    "dnncourse.grading.kernel",
    "dnncourse.grading.template",
    "dnncourse.grading.worker",
    "dnncourse.grading.engine",
    "dnncourse.service.app",
    "distributed.worker",
    "distributed.nanny",
    "distributed.cli.dask_worker",
    "distributed.cli.dask_scheduler",
    "pgserver",
    "pyseccomp",
    "zxcvbn",
    "numpy",
    "pandas",
    "sklearn.decomposition",
    "sklearn.preprocessing",
    "matplotlib.pyplot",
    "matplotlib.backends.backend_agg",
    "matplotlib.backends.backend_svg",
    "tqdm.auto",
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "jupyter_client",
    "nbclient",
    "nbconvert",
    "nbformat",
    "nbgrader.apps",
    "nbgrader.preprocessors",
    "jupyter_cache",
    "jupytext",
    "dask",
    "distributed",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "psutil",
    "starlette.applications",
    "uvicorn",
    "httpx",
    "jinja2",
    "argon2",
    "yaml",
    "bs4",
    "selenium.webdriver",
    "pytest",
    "xdist",
    "jupyter_book.cli.main",
    "sphinx.application",
    "sphinx.builders.html",
    "myst_nb.sphinx_ext",
    "sphinx_book_theme",
    "sphinx_exercise",
    "sphinx_proof",
    "sphinxcontrib.bibtex",
    "sphinx_design",
    "sphinx_togglebutton",
    "sphinx_copybutton",
    "sphinx_thebe",
    "sphinx_comments",
    "sphinx_external_toc",
    "sphinx_jupyterbook_latex",
    "sphinx_multitoc_numbering",
)
WARM_CODE = """
import importlib, sys, warnings
warnings.simplefilter("ignore")
names = sys.argv[1:]
try:  # what every grading kernel (and the kernel template) imports first: torch, _dynamo
    from dnncourse.grading.kernel import PRELOAD
    names = [*PRELOAD, *names]
except Exception as error:
    print(f"install_lock: no bytecode for the kernel's preload: {error!r}")
for name in names:
    try:
        importlib.import_module(name)
    except Exception as error:
        print(f"install_lock: no bytecode for {name}: {error!r}")
"""


def write_bytecode() -> None:
    """Import :data:`WARM` once with bytecode written (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["MPLBACKEND"] = "Agg"
    subprocess.run([sys.executable, "-c", WARM_CODE, *WARM], env=env, check=False)


def pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args]


def pip_settings() -> dict[str, str] | None:
    """pip's effective settings for ``pip install`` (option -> value), None if unreadable."""
    proc = subprocess.run(pip("config", "list"), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    found: dict[tuple[str, str], str] = {}
    for line in proc.stdout.splitlines():
        match = re.fullmatch(r"(:env:|[\w-]+)\.([\w-]+)=(.*)", line.strip())
        if match:
            scope, name, value = match.groups()
            found[scope, name] = " ".join(shlex.split(value))
    settings = {}
    for scope in SCOPES:
        settings.update({name: value for (s, name), value in found.items() if s == scope})
    return settings


def uv_options(settings: dict[str, str]) -> tuple[list[str], dict[str, str]] | None:
    """uv's flags and environment for pip's ``settings``; None where one has no translation."""
    flags = ["--index-strategy", "unsafe-best-match"]
    env = {}
    for name, value in settings.items():
        if name in AS_FLAG:
            for item in value.split():
                flags += [AS_FLAG[name], item]
        elif name == "no-index":
            if value.lower() in ("1", "true", "yes", "on"):
                flags.append("--no-index")
        elif name in AS_ENV:
            env[AS_ENV[name]] = value
        elif name not in HARMLESS:
            print(f"install_lock: pip's setting {name}={value!r} has no uv form: using pip")
            return None
    return flags, env


def lock_pin(name: str) -> str:
    for line in LOCK.read_text(encoding="utf8").splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.strip()
    raise LookupError(f"{LOCK.name} pins no {name}")


def install_with_uv() -> bool:
    """The lock and the package through uv; False where uv is unavailable or fails (pip then
    installs them: what uv installed already is kept where it matches)."""
    settings = pip_settings()
    options = None if settings is None else uv_options(settings)
    if options is None:
        return False
    flags, env = options
    bootstrap = subprocess.run(pip("install", "-qq", lock_pin("uv")), check=False)
    uv = Path(sys.executable).parent / "uv"
    if bootstrap.returncode != 0 or not uv.is_file():
        print("install_lock: uv could not be installed: using pip")
        return False
    env = dict(os.environ, **env)
    install = [str(uv), "pip", "install", "--quiet", "--python", sys.executable, *flags]
    for what in (["--requirement", str(LOCK)], ["--no-deps", "--editable", str(ROOT)]):
        if subprocess.run([*install, *what], env=env, check=False).returncode != 0:
            print(f"install_lock: uv failed on {' '.join(what)}: using pip")
            return False
    return True


def install_with_pip() -> None:
    subprocess.run(pip("install", "--quiet", "--requirement", str(LOCK)), check=True)
    subprocess.run(pip("install", "--quiet", "--no-deps", "--editable", str(ROOT)), check=True)


def main() -> int:
    if sys.prefix == sys.base_prefix:
        sys.exit("install_lock: run it with a virtual environment's python (make venv does)")
    if os.environ.get("DNNCOURSE_INSTALLER", "uv") == "pip" or not install_with_uv():
        install_with_pip()  # pip compiled all it installed
    else:
        write_bytecode()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
