"""Against a real ``bentoml serve`` (the shared ``live_server``: 2 HTTP workers, ``SITENET_QUEUE_TIMEOUT_S=0.5``,
``SITENET_TIMEOUT_S=2``): hostile CIFs cannot stall it, requests past their time get 503/504 in the error
shape with their work stopped, and the README's Python client example runs as written.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
NACL = REPO / "examples" / "NaCl_mp-22862.cif"
BOMBS = sorted((REPO / "tests" / "data" / "bad_cifs").glob("too_many_sites__symmetry_bomb_*.cif"))


def _slow_cif() -> str:
    """A legitimate 384-site CIF that only pymatgen reads (symmetry by space-group name, sites by label alone,
    whose elements pymatgen guesses): ~0.3-0.5 s each."""
    head = BOMBS[1].read_text().split("loop_")[0]
    return head + ("loop_\n _atom_site_label\n _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n"
                   "  C0  0.0500  0.1100  0.1700\n  Si1  0.1300  0.2100  0.3100\n")


def _shaped(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "detail"} and body["code"] == code, body
    return body


def _hammer(url: str, path: Path, times: int, out: list[tuple[float, httpx.Response]]) -> None:
    with httpx.Client(base_url=url, timeout=30.0) as http:
        for _ in range(times):
            start = time.perf_counter()
            response = http.post("/predict", files={"cif": (path.name, path.read_bytes())})
            out.append((time.perf_counter() - start, response))


@pytest.mark.slow
def test_four_bombs_at_once_leave_ordinary_requests_fast(live_server) -> None:
    bombs: list[tuple[float, httpx.Response]] = []
    ordinary: list[tuple[float, httpx.Response]] = []
    threads = [threading.Thread(target=_hammer, args=(live_server.url, BOMBS[k % 2], 10, bombs)) for k in range(4)]
    threads += [threading.Thread(target=_hammer, args=(live_server.url, NACL, 10, ordinary)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(bombs) == 40 and len(ordinary) == 20
    for elapsed, response in bombs:
        _shaped(response, 413, "too_many_sites")
        assert elapsed < 1.0
    assert all(r.status_code == 200 and r.json()["formula"] == "NaCl" for _, r in ordinary)
    worst = max(elapsed for elapsed, _ in ordinary)  # p99 of 20 requests is the worst of them
    assert worst < 1.0, f"an ordinary request took {worst:.2f} s next to the bombs"


@pytest.mark.slow
def test_requests_past_their_time_get_503_or_504_and_their_work_stops(live_server) -> None:
    batch = {"cifs": [_slow_cif()] * 16}  # 16 x 0.2-0.5 s of pymatgen: past the 2 s limit
    answers: list[tuple[float, httpx.Response]] = []

    def send() -> None:
        start = time.perf_counter()
        response = httpx.post(f"{live_server.url}/predict_batch", json=batch, timeout=30.0)
        answers.append((time.perf_counter() - start, response))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(r.status_code for _, r in answers)
    assert set(codes) <= {503, 504} and 504 in codes, codes
    for elapsed, response in answers:
        if response.status_code == 504:
            body = _shaped(response, 504, "timeout")
            assert "work was stopped" in body["message"] and body["detail"] == {"timeout_s": 2}
        else:
            body = _shaped(response, 503, "overloaded")
            assert body["detail"]["reason"] == "queue_timeout" and response.headers["retry-after"]
        assert elapsed < 2 + 1.5, f"answered after {elapsed:.2f} s"
    # the timed-out work was dropped, not finished in the background: the model threads are free at once
    start = time.perf_counter()
    response = httpx.post(f"{live_server.url}/predict", files={"cif": (NACL.name, NACL.read_bytes())}, timeout=30.0)
    assert response.status_code == 200 and time.perf_counter() - start < 1.0


@pytest.mark.slow
def test_the_readme_python_client_example_runs_against_a_real_server(live_server) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "bentoml.SyncHTTPClient" in b]
    assert len(blocks) == 1, "the README's client example moved: update this test"
    code = blocks[0].replace("http://127.0.0.1:3000", live_server.url)
    assert code != blocks[0]
    printed = io.StringIO()
    cwd = os.getcwd()
    os.chdir(REPO)  # the example's paths are relative to the repository root
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example, as a user runs it
    finally:
        os.chdir(cwd)
    out = printed.getvalue()
    for called in ("client.predict(", "client.predict_batch(", "client.predict_text("):
        assert called in code
    assert "'formula': 'NaCl'" in out and "'formula': 'Si'" in out and "'n_ok': 2" in out
    assert "'embedding': None" in out  # the default: what made the client raise TypeError before
