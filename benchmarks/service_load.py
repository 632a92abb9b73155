"""Load test of the SiteNet service: starts ``bentoml serve``, then drives it with keep-alive HTTP clients.

Closed loop (each of C clients sends its next request when the last one returns) at C = 1, 4, 16: latency
p50/p90/p99 and throughput. Open loop at a fixed aggregate rate (default 200 req/s over 16 connections):
latency measured from each request's *scheduled* send time, so a stalled server cannot hide its queue
(no coordinated omission). A 503 is the service shedding load as designed: counted as "shed", kept out of
the latencies and the throughput, and a closed-loop client waits its Retry-After before the next request (as a
well-behaved client would); every other non-200 answer and every connection error is an error. Server RSS
(arbiter and workers) is read before and after every phase.

The client is a small asyncio HTTP/1.1 client over raw sockets (no per-request client overhead worth
measuring), so on a shared 2-core machine most of the CPU goes to the server. Requests upload one of the
``examples/*.cif`` files to ``POST /predict`` (multipart, band gap + formation energy). ``--mix hostile`` sends,
in turn, ordinary CIFs, symmetrised ones (space-group symbol only, ``tests/data/symbol_only``) and hostile ones
(``tests/data/bad_cifs``: symmetry bombs, 10,000 atoms, binary garbage, truncated files...): ordinary and
symmetrised must answer 200 and hostile ones 4xx; latencies are reported per kind, so the cost of hostile
neighbours to ordinary requests shows. 504 (the documented per-request time limit) is counted apart from errors.

    python benchmarks/service_load.py                     # 60 s per phase, writes benchmarks/results/
    python benchmarks/service_load.py --duration 10       # quick look
    python benchmarks/service_load.py --rate 200 40       # open loop at 200 req/s and at 40 req/s
    python benchmarks/service_load.py --url http://host:3000       # a running server (memory not read)
    python benchmarks/service_load.py --mix hostile --clients 16 --rate 0 --output benchmarks/results/service_load_hostile
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _multipart(path: Path, boundary: str = "sitenetbenchboundary") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"cif\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


#: What each kind of request must get: ordinary and symmetrised CIFs a prediction, hostile ones a 4xx.
EXPECTED = {"ordinary": range(200, 201), "symmetrised": range(200, 201), "hostile": range(400, 500)}
HOSTILE = ("too_many_sites__symmetry_bomb_operation_loop.cif", "too_many_sites__symmetry_bomb_space_group_name.cif",
           "too_many_sites__p1_10000_atoms.cif", "cif_parse_error__binary_garbage.bin",
           "cif_parse_error__truncated_mid_loop.cif", "overlapping_atoms__two_atoms_0_1_angstrom.cif",
           "disordered_structure__partial_occupancy_na_k.cif", "invalid_lattice__tiny_cell_volume.cif")


def request_files(mix: str) -> list[tuple[Path, str]]:
    """(CIF file, kind) in sending order: ``ordinary`` only, or ordinary / symmetrised / ordinary / hostile in turn."""
    ordinary = sorted((REPO / "examples").glob("*.cif"))
    if mix == "ordinary":
        return [(p, "ordinary") for p in ordinary]
    symmetrised = sorted((REPO / "tests" / "data" / "symbol_only").glob("*.cif"))[::12]
    hostile = [REPO / "tests" / "data" / "bad_cifs" / name for name in HOSTILE]
    n = max(len(ordinary), len(symmetrised), len(hostile))
    return [item for k in range(n) for item in ((ordinary[k % len(ordinary)], "ordinary"),
                                                (symmetrised[k % len(symmetrised)], "symmetrised"),
                                                (ordinary[(k + 1) % len(ordinary)], "ordinary"),
                                                (hostile[k % len(hostile)], "hostile"))]


def build_requests(host: str, port: int, route: str, files: list[tuple[Path, str]]) -> list[tuple[bytes, str]]:
    out = []
    for path, kind in files:
        body, ctype = _multipart(path)
        head = (f"POST {route} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode()
        out.append((head + body, kind))
    return out


def _count(status: int, kind: str, errors: dict[str, int]) -> None:
    """Record an answer that is not what its kind should get (504s apart: the documented time limit)."""
    if status == 504:
        errors["504"] = errors.get("504", 0) + 1
    elif status not in EXPECTED[kind]:
        key = f"{status} ({kind})"
        errors[key] = errors.get(key, 0) + 1


class Connection:
    """One keep-alive HTTP/1.1 connection; ``request`` returns (status, headers, body)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        try:
            self.writer.write(raw)
            return await asyncio.wait_for(self._response(), self.timeout)
        except BaseException:
            self.close()
            raise

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:  # chunked
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(host: str, port: int, requests: list[tuple[bytes, str]], clients: int, duration: float,
                      timeout: float) -> dict:
    latencies: list[tuple[float, str]] = []
    errors: dict[str, int] = {}
    shed = 0
    stop = time.perf_counter() + duration

    async def client(k: int) -> None:
        nonlocal shed
        conn = Connection(host, port, timeout)
        i = k
        while time.perf_counter() < stop:
            raw, kind = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter()
            try:
                status, headers, body = await conn.request(raw)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
                errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                continue
            if status == 503:
                shed += 1
                await asyncio.sleep(min(float(headers.get("retry-after", "1")), max(0.0, stop - time.perf_counter())))
                continue
            latencies.append((time.perf_counter() - t0, kind))
            _count(status, kind, errors)
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return _summary(latencies, errors, shed, time.perf_counter() - t0, clients=clients, mode="closed")


async def open_loop(host: str, port: int, requests: list[tuple[bytes, str]], clients: int, rate: float,
                    duration: float, timeout: float) -> dict:
    """``rate`` req/s in total, spread evenly over ``clients`` connections; latency from the scheduled time."""
    latencies: list[tuple[float, str]] = []
    errors: dict[str, int] = {}
    start = time.perf_counter() + 0.05
    per_client = rate / clients
    not_sent = shed = 0

    async def client(k: int) -> None:
        nonlocal not_sent, shed
        conn = Connection(host, port, timeout)
        n = 0
        while True:
            scheduled = start + (n + k / clients) / per_client
            if scheduled > start + duration:
                break
            if time.perf_counter() > start + duration + 5.0:  # overloaded: stop rather than drain for minutes
                not_sent += int((start + duration - scheduled) * per_client) + 1
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            raw, kind = requests[(n * clients + k) % len(requests)]
            n += 1
            try:
                status, _, _ = await conn.request(raw)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
                errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                continue
            if status == 503:
                shed += 1
                continue
            latencies.append((time.perf_counter() - scheduled, kind))
            _count(status, kind, errors)
        conn.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    result = _summary(latencies, errors, shed, time.perf_counter() - start, clients=clients, mode="open")
    result["offered_rps"] = rate
    result["not_sent"] = not_sent
    return result


def _percentiles(ms: np.ndarray) -> dict[str, float | None]:
    pct = (lambda q: round(float(np.percentile(ms, q)), 2)) if len(ms) else (lambda q: None)
    return {"p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": pct(100)}


def _summary(latencies: list[tuple[float, str]], errors: dict[str, int], shed: int, elapsed: float, *,
             clients: int, mode: str) -> dict:
    ms = np.asarray([t for t, _ in latencies]) * 1e3
    kinds = sorted({k for _, k in latencies})
    by_kind = {k: {"requests": sum(kk == k for _, kk in latencies),
                   **_percentiles(np.asarray([t for t, kk in latencies if kk == k]) * 1e3)} for k in kinds}
    timeouts = errors.pop("504", 0)
    return {"mode": mode, "clients": clients, "requests": len(ms), "seconds": round(elapsed, 2),
            "throughput_rps": round(len(ms) / elapsed, 1) if elapsed else 0.0, **_percentiles(ms),
            "shed": shed, "timeouts_504": timeouts, "errors": sum(errors.values()), "errors_by_kind": errors,
            **({"by_kind": by_kind} if len(kinds) > 1 else {})}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> dict[str, float] | None:
    try:
        import psutil
    except ImportError:
        return None
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        per = {f"{p.pid}:{' '.join(p.cmdline()[-3:])[:60]}": round(p.memory_info().rss / 2**20, 1) for p in procs}
    except psutil.Error:
        return None
    return {"total_mb": round(sum(per.values()), 1), "processes": per}


def _served(host: str, port: int) -> dict:
    """What the server says it runs (/info): model versions, the execution providers in use, placement."""
    import urllib.request

    request = urllib.request.Request(f"http://{host}:{port}/info", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        info = json.loads(r.read())
    return {"models": {role: {"version": f"{m['name']}@{m['version']}", "providers": m["providers"]}
                       for role, m in info["models"].items()},
            "placement": info.get("placement")}


def _wait_ready(host: str, port: int, server: subprocess.Popen, log: str, timeout: float = 120.0) -> float:
    """Poll /readyz with a short per-request timeout (it hangs while models load, stack notes §1 pitfall 4)."""
    import urllib.error
    import urllib.request

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if server.poll() is not None:  # it died while starting: say why now, not after the timeout
            tail = Path(log).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"bentoml serve exited with status {server.returncode} while starting:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except (urllib.error.URLError, OSError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"server on port {port} not ready after {timeout} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase (default 60)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="closed-loop client counts")
    parser.add_argument("--rate", type=float, nargs="+", default=[200.0],
                        help="open-loop aggregate rates, req/s, one phase each (0: skip)")
    parser.add_argument("--rate-clients", type=int, default=16, help="connections of the open-loop phase")
    parser.add_argument("--route", default="/predict")
    parser.add_argument("--mix", choices=["ordinary", "hostile"], default="ordinary",
                        help="ordinary example CIFs, or ordinary, symmetrised and hostile ones in turn")
    parser.add_argument("--url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up load before measuring")
    parser.add_argument("--output", default=str(RESULTS / "service_load"), help="results path without suffix")
    parser.add_argument("--soak", type=int, default=0, help="then this many more closed-loop phases at the most "
                        "clients (memory stability: RSS is recorded after every phase)")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = parser.parse_args(argv)

    files = request_files(args.mix)
    server = None
    if args.url:
        parsed = urlparse(args.url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    else:
        host, port = "127.0.0.1", _free_port()
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}
        import tempfile

        log = tempfile.NamedTemporaryFile("w", prefix="sitenet-serve-", suffix=".log", delete=False)  # noqa: SIM115
        print(f"server log: {log.name}", flush=True)
        server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--host", host, "--port", str(port)],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready_s = _wait_ready(host, port, server, log.name) if server else 0.0
        served = _served(host, port)
        print(json.dumps(served), flush=True)
        requests = build_requests(host, port, args.route, files)
        rss_before = _rss_mb(server.pid) if server else None
        if args.warmup > 0:
            asyncio.run(closed_loop(host, port, requests, 4, args.warmup, args.timeout))
        phases = []

        def record(phase: dict) -> None:  # server memory after every phase shows whether it settles
            phase["rss_mb"] = (_rss_mb(server.pid) or {}).get("total_mb") if server else None
            phases.append(phase)
            print(json.dumps(phase), flush=True)

        for c in args.clients:
            record(asyncio.run(closed_loop(host, port, requests, c, args.duration, args.timeout)))
        for rate in (r for r in args.rate if r > 0):
            record(asyncio.run(open_loop(host, port, requests, args.rate_clients, rate, args.duration,
                                         args.timeout)))
        for _ in range(args.soak):
            record(asyncio.run(closed_loop(host, port, requests, max(args.clients), args.duration, args.timeout)))
        rss_after = _rss_mb(server.pid) if server else None
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "route": args.route, "mix": args.mix, "cifs": sorted({p.name for p, _ in files}),
              "duration_s": args.duration,
              "server_ready_s": round(ready_s, 2), "served": served, "rss_before": rss_before, "rss_after": rss_after,
              "phases": phases, "cpu_count": os.cpu_count(), "machine": platform.platform(), "note": args.note,
              "settings": {k: v for k, v in os.environ.items() if k.startswith("SITENET_")}}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def _served_line(served: dict | None) -> str:
    if not served:
        return "n/a"
    models = ", ".join(f"{m['version']} on {m['providers'][0] if m['providers'] else 'no provider'}"
                       for m in served["models"].values())
    return f"{models}; placement {served.get('placement')}"


def _markdown(r: dict) -> str:
    rows = ["| mode | clients | offered req/s | requests | throughput req/s | p50 ms | p90 ms | p99 ms | max ms "
            "| shed (503) | timeouts (504) | errors | not sent | server RSS after, MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in r["phases"]:
        rows.append(f"| {p['mode']} | {p['clients']} | {p.get('offered_rps', '-')} | {p['requests']} | "
                    f"{p['throughput_rps']} | {p['p50_ms']} | {p['p90_ms']} | {p['p99_ms']} | {p['max_ms']} | "
                    f"{p.get('shed', '-')} | {p.get('timeouts_504', '-')} | {p['errors']} {p['errors_by_kind'] or ''} | {p.get('not_sent', '-')} | "
                    f"{p.get('rss_mb', '-')} |")
    kinds = [(p, k, v) for p in r["phases"] for k, v in p.get("by_kind", {}).items()]
    if kinds:
        rows += ["", "Latency by kind of request (ordinary and symmetrised CIFs must answer 200, hostile ones 4xx):", "",
                 "| mode | clients | kind | requests | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|---|"]
        rows += [f"| {p['mode']} | {p['clients']} | {k} | {v['requests']} | {v['p50_ms']} | {v['p90_ms']} | "
                 f"{v['p99_ms']} | {v['max_ms']} |" for p, k, v in kinds]
    rss = lambda x: x["total_mb"] if x else "n/a"  # noqa: E731
    return (f"# Service load test\n\n`{r['command']}` — {r['duration_s']} s per phase, `POST {r['route']}` with "
            f"{', '.join(r['cifs'])}, {r['cpu_count']} CPUs ({r['machine']}).\n\n" + "\n".join(rows) +
            f"\n\nServed: {_served_line(r.get('served'))}. Server ready after {r['server_ready_s']} s; RSS (arbiter + workers) {rss(r['rss_before'])} MB "
            f"before, {rss(r['rss_after'])} MB after.\n\n{r['note']}\n")


if __name__ == "__main__":
    sys.exit(main())
