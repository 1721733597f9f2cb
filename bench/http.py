"""Drives bench/http.sh: interleaved wrk rounds against each stack of bench-server.

Usage: python3 bench/http.py PATH/TO/bench-server

Environment: STACKS (space separated, default all), ROUNDS (5), SECONDS_PER_RUN (5),
WARMUP_SECONDS (2), CONNECTIONS (50), RSS_REQUESTS (1000000; 0 skips the RSS phase).
"""

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALL_STACKS = [
    "bare",
    "handrolled",
    "context",
    "context-log",
    "full",
    "full-verify-each",
    "full-rate-limit",
    "full-redis-limit",
    "full-redis-lease",
    "tower-http",
    "full-otlp",
]
LABELS = {
    "bare": "bare axum",
    "handrolled": "hand-rolled task_local! + JSON line",
    "context": "reqscope context only",
    "context-log": "reqscope context + 1 stamped line",
    "full": "reqscope full stack: JWT + 2 lines",
    "full-verify-each": "the same, token verified in full each time",
    "full-rate-limit": "full stack + rate limit (in process)",
    "full-redis-limit": "full stack + rate limit (Redis on loopback)",
    "full-redis-lease": "full stack + rate limit (Redis, local leases of 256)",
    "tower-http": "tower-http + fmt().json() (2 lines)",
    "full-otlp": "full stack + OTLP export (1 span, 2 records)",
}
# The stand-in collector of full-otlp, pinned with wrk: its work is not the server's.
SINK_PORT = 4199
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    return int(os.environ.get(name, default))


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def status_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def wait_for_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def sink_counts():
    """The body of the sink's GET /counts (urllib is out of reach: this file is named http)."""
    with socket.create_connection(("127.0.0.1", SINK_PORT), timeout=5) as conn:
        conn.sendall(b"GET /counts HTTP/1.0\r\nHost: sink\r\n\r\n")
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    return reply.split(b"\r\n\r\n", 1)[1].decode()


TOKEN = ""


def wrk(port, seconds, connections):
    # Every stack gets the same request, a bearer token included; only the full stacks check it.
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", f"Authorization: Bearer {TOKEN}", f"http://127.0.0.1:{port}/hello"],
        capture_output=True, text=True, check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1, "ms": 1000, "s": 1_000_000}
    p99_us = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return requests, rps, p99_us


class Server:
    def __init__(self, binary, stack, port, log_dir):
        self.stack, self.port = stack, port
        self.log = Path(log_dir) / f"{stack}.log"
        env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{SINK_PORT}")
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", binary, stack, "--addr", f"127.0.0.1:{port}", "--log-file", str(self.log)],
            stdout=subprocess.DEVNULL, env=env,
        )
        wait_for_port(port)

    def truncate_log(self):
        # The server appends, so truncating keeps the disk from filling over many rounds.
        if self.log.exists():
            os.truncate(self.log, 0)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def rss_phase(binary, port, log_dir, target, connections):
    """Peak RSS of the full stack after 100k and after `target` requests."""
    server = Server(binary, "full", port, log_dir)
    done, marks = 0, {}
    try:
        for goal in (100_000, target):
            while done < goal:
                requests, _, _ = wrk(port, 2, connections)
                done += requests
                server.truncate_log()
            marks[goal] = (done, status_kib(server.proc.pid, "VmHWM"), status_kib(server.proc.pid, "VmRSS"))
    finally:
        server.stop()
    return marks


def svg_chart(rows, path):
    """A horizontal bar chart of median req/s per stack, no dependencies."""
    width, bar_h, gap, left = 760, 26, 10, 300
    height = 60 + len(rows) * (bar_h + gap)
    peak = max(r["rps"] for r in rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
        f'<text x="10" y="22" font-size="15" font-weight="bold">GET /hello, median requests/s (server on 1 core, 1 tokio worker)</text>',
    ]
    for i, r in enumerate(rows):
        y = 40 + i * (bar_h + gap)
        w = (width - left - 110) * r["rps"] / peak
        color = "#2b6cb0" if r["stack"].startswith(("context", "full")) else "#a0aec0"
        parts.append(f'<text x="10" y="{y + 18}">{LABELS[r["stack"]]}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 18}">{r["rps"]:,.0f} ({r["cpu_us"]:.2f} µs CPU)</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")


def main():
    global TOKEN
    binary = sys.argv[1]
    TOKEN = subprocess.run([binary, "token"], capture_output=True, text=True, check=True).stdout.strip()
    stacks = os.environ.get("STACKS", " ".join(ALL_STACKS)).split()
    rounds = env_int("ROUNDS", 5)
    seconds = env_int("SECONDS_PER_RUN", 5)
    warmup = env_int("WARMUP_SECONDS", 2)
    connections = env_int("CONNECTIONS", 50)
    rss_target = env_int("RSS_REQUESTS", 1_000_000)
    results = {s: [] for s in stacks}
    served = {s: 0 for s in stacks}
    sink = None
    if "full-otlp" in stacks:
        sink = subprocess.Popen(["taskset", "-c", "1", binary, "otlp-sink", f"127.0.0.1:{SINK_PORT}"],
                                stdout=subprocess.DEVNULL)
        wait_for_port(SINK_PORT)

    with tempfile.TemporaryDirectory(prefix="reqscope-bench-") as log_dir:
        servers = {}
        try:
            for i, stack in enumerate(stacks):
                servers[stack] = Server(binary, stack, 4100 + i, log_dir)
            for stack, server in servers.items():
                served[stack] += wrk(server.port, warmup, connections)[0]
                server.truncate_log()
            for round_no in range(rounds):
                for stack, server in servers.items():
                    before = cpu_ticks(server.proc.pid)
                    requests, rps, p99 = wrk(server.port, seconds, connections)
                    served[stack] += requests
                    ticks = cpu_ticks(server.proc.pid) - before
                    cpu_us = ticks / CLK_TCK * 1e6 / requests
                    results[stack].append((rps, cpu_us, p99))
                    server.truncate_log()
                    print(f"round {round_no + 1}/{rounds} {stack:12} {rps:10,.0f} req/s {cpu_us:6.2f} µs CPU/req p99 {p99:7.0f} µs",
                          file=sys.stderr)
            peaks = {stack: status_kib(s.proc.pid, "VmHWM") for stack, s in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
            exported = None
            if sink:
                # What reached the collector of all that was served (the batches still queued when
                # the server was stopped are not counted).
                exported = [int(n) for n in sink_counts().split()]
                sink.terminate()
                sink.wait(timeout=10)
        marks = rss_phase(binary, 4100 + len(stacks), log_dir, rss_target, connections) if rss_target else {}

    rows = []
    for stack in stacks:
        rps = statistics.median(r[0] for r in results[stack])
        cpu = statistics.median(r[1] for r in results[stack])
        p99 = statistics.median(r[2] for r in results[stack])
        rows.append({"stack": stack, "rps": rps, "cpu_us": cpu, "p99": p99, "rss": peaks[stack]})
    base = next((r for r in rows if r["stack"] == "bare"), rows[0])
    tower = next((r for r in rows if r["stack"] == "tower-http"), None)

    cpu_model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                      if l.startswith("model name")), "unknown CPU")
    lines = [
        f"Machine: {os.cpu_count()} × {cpu_model}; server pinned to CPU 0 (one tokio worker), wrk -t1 -c{connections} pinned to CPU 1.",
        f"{rounds} interleaved rounds of {seconds} s per stack after a {warmup} s warm-up; medians. "
        "CPU µs/req = the server process's user+system time over the requests wrk completed.",
        "",
        "| stack | req/s | × bare | server CPU µs/req | Δ vs bare | p99 latency | peak RSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {LABELS[r['stack']]} | {r['rps']:,.0f} | {r['rps'] / base['rps']:.2f} | {r['cpu_us']:.2f} | "
            f"{r['cpu_us'] - base['cpu_us']:+.2f} | {r['p99']:.0f} µs | {r['rss'] / 1024:.1f} MiB |"
        )
    if tower:
        for r in rows:
            if r["stack"] in ("full", "full-verify-each"):
                lines += ["", f"{LABELS[r['stack']]} vs tower-http stack: {r['rps'] / tower['rps']:.2f}× the throughput, "
                              f"{tower['cpu_us'] / r['cpu_us']:.2f}× less server CPU per request."]
    if exported is not None:
        requests = served["full-otlp"]
        lines += ["", f"full-otlp exported {exported[0]:,} spans and {exported[1]:,} log records for {requests:,} requests "
                      f"(spans {exported[0] / requests * 100:.1f}%, records {exported[1] / (2 * requests) * 100:.1f}% of one and "
                      "two per request: below 100%, the SDK's bounded queues dropped some)."]
    if marks:
        (n1, hwm1, _), (n2, hwm2, _) = marks[100_000], marks[rss_target]
        lines += ["", f"Peak RSS of the full stack: {hwm1 / 1024:.1f} MiB after {n1:,} requests, "
                      f"{hwm2 / 1024:.1f} MiB after {n2:,} requests ({(hwm2 / hwm1 - 1) * 100:+.1f}%)."]
    table = "\n".join(lines)
    print(table)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "http.md").write_text(table + "\n")
    svg_chart(rows, out_dir / "http.svg")
    print(f"\nwrote {out_dir / 'http.md'} and {out_dir / 'http.svg'}", file=sys.stderr)


if __name__ == "__main__":
    main()
