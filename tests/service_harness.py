"""The submission service started for real (uvicorn in a subprocess on 127.0.0.1) and a client.

Shared by tests/test_service*.py and benchmarks/bench_service.py: :func:`start` runs
``dnncourse serve`` on a free port with its data folder in a temporary folder and waits
until it answers; :class:`Client` is one person's browser-less session (httpx, cookies, the
CSRF token read from the pages).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import httpx

from dnncourse.homework import tool_env

ROOT = Path(__file__).resolve().parents[1]
HW = "hw1"
NAME = "hw1_polynomial_gradients"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
LINK = re.compile(r'<code class="link">([^<]+)</code>')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    data: Path
    args: list
    log: Path

    def kill(self) -> None:
        """SIGKILL the service and everything it started (workers, kernels)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind, if any
        except ProcessLookupError:
            pass


def serve_command(data: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "dnncourse.cli", "serve", "--data", str(data),
        "--port", str(port), "--assignments", HW, *extra,
    ]  # fmt: skip


def instructor_link(data: Path, port: int, login: str = "prof") -> str:
    cmd = [*serve_command(data, port), "--add-instructor", login]
    out = subprocess.run(
        cmd, cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def start(data: Path, *extra: str, port: int | None = None, timeout: float = 120) -> Server:
    """Start ``dnncourse serve`` (its own process group) and wait until it answers."""
    port = port or free_port()
    data.mkdir(parents=True, exist_ok=True)
    log = data / f"server-{port}-{time.time_ns()}.log"
    cmd = serve_command(data, port, *extra)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=tool_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited: {log.read_text()[-3000:]}")
        try:
            httpx.get(url + "/login", timeout=2)
            return Server(proc, url, data, list(extra), log)
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the service did not answer in {timeout} s: {log.read_text()[-3000:]}")


class Client:
    """One person's session against the service."""

    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60, follow_redirects=False)
        self.csrf = ""
        # closed when this session is dropped: no socket is left to the garbage collector
        weakref.finalize(self, self.http.close)

    def get(self, path: str, **kw) -> httpx.Response:
        response = self.http.get(path, **kw)
        found = (
            CSRF.search(response.text)
            if "html" in response.headers.get("content-type", "")
            else None
        )
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data=None, files=None, csrf: bool = True) -> httpx.Response:
        data = dict(data or {})
        if csrf:
            data["csrf"] = self.csrf
        return self.http.post(path, data=data, files=files)

    def signin(self, link: str, password: str = "correct horse battery") -> None:
        path = link[len(self.url) :] if link.startswith(self.url) else link
        assert self.get(path).status_code == 200
        r = self.post(path, {"password": password, "again": password})
        assert r.status_code == 303, r.text
        self.get("/assignments")  # the session was renewed: a fresh CSRF token

    def login(self, login: str, password: str) -> httpx.Response:
        self.get("/login")
        response = self.post("/login", {"login": login, "password": password})
        if response.status_code == 303:
            self.get("/assignments")
        return response

    def roster(self, rows: list[tuple[str, str]]) -> dict[str, str]:
        """Import students (id, name); returns id -> sign-in link."""
        self.get("/instructor")
        text = "student_id,name,email\n" + "".join(f"{i},{n},{i}@example.org\n" for i, n in rows)
        r = self.post("/instructor/roster", files={"roster": ("roster.csv", text, "text/csv")})
        assert r.status_code == 200, r.text
        ids = re.findall(r"<tr><td>([^<]+)</td>", r.text)
        return dict(zip(ids, LINK.findall(r.text), strict=True))

    def upload(self, nb, filename: str = f"{NAME}.ipynb", field: str = NAME) -> httpx.Response:
        data = nb if isinstance(nb, bytes) else json.dumps(nb).encode()
        if not self.csrf:
            self.get(f"/assignments/{HW}")
        return self.post(f"/assignments/{HW}/submit", files={field: (filename, data)})

    def submission_id(self, response: httpx.Response) -> int:
        assert response.status_code == 303, response.text[-2000:]
        return int(response.headers["location"].rsplit("/", 1)[1])

    def wait(self, sub_id: int, timeout: float = 300) -> dict:
        """The submission's view once graded, through the page's long poll (``since``)."""
        deadline = time.monotonic() + timeout
        view = {}
        while time.monotonic() < deadline:
            wait = min(25.0, max(0.1, deadline - time.monotonic()))
            params = {"since": view["tag"], "wait": wait} if view else {}
            view = self.http.get(f"/submissions/{sub_id}.json", params=params).json()
            if view["state"] == "graded":
                return view
        raise TimeoutError(f"submission {sub_id} not graded in {timeout} s: {view}")
