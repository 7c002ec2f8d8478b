"""`make venv` installs the lock with uv, configured as pip is (tools/install_lock.py).

uv reads none of pip's settings, so ``install_lock`` passes pip's own on: the wheel that pip
takes (on this machine torch's CPU wheel, found through pip's ``find-links``) is the one uv
takes. An option it cannot translate leaves the installing to pip.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("install_lock", ROOT / "tools" / "install_lock.py")
install_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install_lock)


def test_make_venv_installs_through_install_lock():
    proc = subprocess.run(
        ["make", "-n", "-B", "venv", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(ln.endswith("/python tools/install_lock.py") for ln in lines), lines
    assert not [ln for ln in lines if "pip install" in ln], "make installs around install_lock"


def test_pip_settings_later_scopes_win(tmp_path, monkeypatch):
    """pip's order: the config files' [global], then [install], then PIP_* variables."""
    config = tmp_path / "pip.conf"
    config.write_text(
        "[global]\nfind-links = /from/global\nindex-url = https://global.example/simple\n"
        "[install]\nindex-url = https://install.example/simple\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_FIND_LINKS", "/from/env /and/more")
    settings = install_lock.pip_settings()
    assert settings["find-links"] == "/from/env /and/more"
    assert settings["index-url"] == "https://install.example/simple"


def test_pip_settings_become_uv_options():
    flags, env = install_lock.uv_options(
        {
            "find-links": "/opt/wheels",
            "extra-index-url": "file:///a/simple file:///b/simple",
            "constraint": "/etc/c.txt",
            "cert": "/etc/ca.crt",
            "default-timeout": "180",
            "disable-pip-version-check": "1",
        }
    )
    pairs = list(zip(flags[::2], flags[1::2], strict=True))
    assert ("--index-strategy", "unsafe-best-match") in pairs  # pip merges all indexes
    assert ("--find-links", "/opt/wheels") in pairs
    assert ("--extra-index-url", "file:///a/simple") in pairs
    assert ("--extra-index-url", "file:///b/simple") in pairs
    assert ("--constraint", "/etc/c.txt") in pairs
    assert env == {"SSL_CERT_FILE": "/etc/ca.crt", "UV_HTTP_TIMEOUT": "180"}
    # an option that changes what pip installs, and has no translation: pip installs
    assert install_lock.uv_options({"pre": "true"}) is None
    assert install_lock.uv_options({"only-binary": ":all:"}) is None


def test_uv_takes_the_wheel_pip_takes(tmp_path):
    """This interpreter's torch came from the lock through pip's settings; uv, given them,
    picks that same build (on this machine torch's CPU wheel from pip's find-links), where
    uv alone picks another (PyPI's build, if the index is reachable: the control)."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is not installed in this venv (make venv installs it)")
    from importlib.metadata import version

    installed = version("torch")
    wanted = tmp_path / "req.txt"
    wanted.write_text(f"torch=={installed.split('+')[0]}\n")
    flags, env = install_lock.uv_options(install_lock.pip_settings())

    def pick(*options: str) -> str | None:
        compile_ = [uv, "pip", "compile", "--quiet", "--no-deps", "--no-header", *options]
        proc = subprocess.run(
            [*compile_, "--python", sys.executable, str(wanted)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        return proc.stdout.split()[0].split("==")[1] if proc.returncode == 0 else None

    assert pick(*flags) == installed
    if "+" in installed:  # a local build (torch's CPU wheel): uv alone takes another
        alone = pick()
        if alone is None:
            pytest.skip("PyPI is not reachable: no control")
        assert alone != installed


def test_the_modules_whose_bytecode_is_written_exist():
    """A name in WARM that no longer exists would silently leave its bytecode unwritten."""
    missing = [name for name in install_lock.WARM if importlib.util.find_spec(name) is None]
    assert not missing, missing


def test_the_kernels_preload_is_compiled_with_the_rest():
    """The set-up's import run covers what every grading kernel imports first, taken from
    ``dnncourse.grading.kernel.PRELOAD`` itself (not a copy of it that could drift); the
    control: importing the kernel module alone does not import its preload."""
    left = "[n for n in PRELOAD if n not in sys.modules]"
    check = f"\nimport json\nprint('MISSING', json.dumps({left}))"
    alone = "import sys\nfrom dnncourse.grading.kernel import PRELOAD" + check
    for code, expected in ((install_lock.WARM_CODE + check, []), (alone, None)):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MISSING ")][-1]
        missing = json.loads(line[len("MISSING ") :])
        if expected is None:
            assert "torch._dynamo" in missing, "the control imported the preload by itself"
        else:
            assert missing == expected
