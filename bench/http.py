"""Drives bench/http.sh: interleaved load rounds against each stack of bench-server.

Usage: python3 bench/http.py PATH/TO/bench-server

Four groups of rows, each with its own table and baseline: HTTP/1.1 under wrk (STACKS),
h2c under h2load (H2_STACKS), gRPC under `bench-server grpc-load` (GRPC_STACKS), WebSocket
echoes under `bench-server ws-load` (WS_STACKS). Each is a space-separated list; with none of
the four set every group runs in full, with one or more set the unset ones run nothing.

Environment: ROUNDS (5), SECONDS_PER_RUN (5), WARMUP_SECONDS (2), CONNECTIONS (50: wrk's and
h2load's connections, the WebSockets), H2_STREAMS (10 per h2load connection), GRPC_CALLS (50
concurrent calls) over GRPC_CONNECTIONS (4), RSS_REQUESTS (1000000; 0 skips the RSS phase),
PORT_BASE (4100: the servers listen from there up).
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
    "full-redaction-off",
    "full-level-filter",
    "full-keep-until-error",
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
    "full-redaction-off": "full stack, redaction off (Redaction::none())",
    "full-level-filter": "full stack + RequestLevelFilter(EnvFilter info), 1 DEBUG line filtered",
    "full-keep-until-error": "the same + keep_until_error: the DEBUG line kept, then dropped",
    "full-rate-limit": "full stack + rate limit (in process)",
    "full-redis-limit": "full stack + rate limit (Redis on loopback)",
    "full-redis-lease": "full stack + rate limit (Redis, local leases of 16)",
    "tower-http": "tower-http + fmt().json() (2 lines)",
    "full-otlp": "full stack + OTLP export (1 span, 2 records)",
}
# The rows of the other protocols, each group against its own first row.
H2_DEFAULT = ["bare", "context-log", "full"]
GRPC_LABELS = {
    "grpc-bare": "bare tonic",
    "grpc-context-log": "tonic + reqscope context + 1 stamped line",
    "grpc-auth": "the same + AuthLayer (HS256, token cache)",
}
WS_LABELS = {
    "ws-bare": "bare axum WebSocket echo",
    "ws-context-log": "reqscope context on the connection + 1 stamped line per message",
}
# The servers listen on PORT_BASE + i; the stand-in collector of full-otlp, pinned with
# wrk (its work is not the server's), on PORT_BASE + 99.
PORT_BASE = int(os.environ.get("PORT_BASE", 4100))
SINK_PORT = PORT_BASE + 99
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    return int(os.environ.get(name, default))


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def writer_ticks(pid):
    """utime + stime of the log writer's thread (named reqscope-log-writer, cut to 15 bytes)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # a thread that just ended
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        if name.startswith("reqscope-log"):
            total += int(fields[11]) + int(fields[12])
    return total


def status_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start(args, port, **popen):
    """Starts a server on `port`, refusing a port already taken (another run of this script)."""
    if port_open(port):
        raise RuntimeError(f"port {port} is taken: is another benchmark running? (PORT_BASE moves the ports)")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, **popen)
    wait_for_port(port, proc)
    return proc


def wait_for_port(port, proc, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
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


def h2load(port, seconds, connections, streams, log_dir):
    """h2c with prior knowledge; h2load prints no percentiles, so p99 comes from its request log."""
    timings = Path(log_dir) / "h2load-requests.tsv"
    out = subprocess.run(
        ["taskset", "-c", "1", "h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-D{seconds}",
         f"--log-file={timings}", "-H", f"authorization: Bearer {TOKEN}", f"http://127.0.0.1:{port}/hello"],
        capture_output=True, text=True, check=True,
    ).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    if not done or not status or int(done.group(3)) or int(done.group(4)) or int(status.group(1)) != int(done.group(1)):
        raise RuntimeError(f"h2load saw errors:\n{out}")
    rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    # One line per request: start time, status, microseconds to the response's end.
    micros = sorted(int(line.split("\t")[2]) for line in timings.read_text().splitlines() if line)
    timings.unlink()
    p99 = micros[(len(micros) - 1) * 99 // 100] if micros else float("nan")
    return int(done.group(1)), rps, p99


def load_client(binary, args):
    """bench-server grpc-load / ws-load, pinned with wrk: `<what>=N seconds=S p99_us=X`."""
    out = subprocess.run(["taskset", "-c", "1", binary, *map(str, args)],
                         capture_output=True, text=True, check=True).stdout
    done, seconds, p99 = re.search(r"\w+=(\d+) seconds=(\d+) p99_us=(\S+)", out).groups()
    return int(done), int(done) / int(seconds), float(p99)


class Server:
    def __init__(self, binary, stack, port, log_dir, key=None, env=None):
        self.stack, self.port = stack, port
        self.log = Path(log_dir) / f"{key or stack}.log"
        env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{SINK_PORT}", **(env or {}))
        self.proc = start(
            ["taskset", "-c", "0", binary, stack, "--addr", f"127.0.0.1:{port}", "--log-file", str(self.log)],
            port, env=env,
        )

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


def selected():
    """The rows of each group: all by default; once any group is named, only those named."""
    names = {"http": "STACKS", "h2c": "H2_STACKS", "grpc": "GRPC_STACKS", "ws": "WS_STACKS"}
    defaults = {"http": ALL_STACKS, "h2c": H2_DEFAULT, "grpc": list(GRPC_LABELS), "ws": list(WS_LABELS)}
    any_set = any(var in os.environ for var in names.values())
    return {group: os.environ.get(var, "" if any_set else " ".join(defaults[group])).split()
            for group, var in names.items()}


def group_table(rows, unit, what, labels):
    """A table of one group, against its first row (its bare baseline)."""
    base = rows[0]
    lines = [
        f"| stack | {unit}/s | × {labels(base)} | server CPU µs/{unit} | Δ | fastest round, Δ | p99 latency | peak RSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {labels(r)} | {r['rps']:,.0f} | {r['rps'] / base['rps']:.2f} | {r['cpu_us']:.2f} | "
            f"{r['cpu_us'] - base['cpu_us']:+.2f} | {r['cpu_min']:.2f}, {r['cpu_min'] - base['cpu_min']:+.2f} | "
            f"{r['p99']:.0f} µs | {r['rss'] / 1024:.1f} MiB |"
        )
    return ["", what, ""] + lines


def main():
    global TOKEN
    binary = sys.argv[1]
    TOKEN = subprocess.run([binary, "token"], capture_output=True, text=True, check=True).stdout.strip()
    groups = selected()
    rounds = env_int("ROUNDS", 5)
    seconds = env_int("SECONDS_PER_RUN", 5)
    warmup = env_int("WARMUP_SECONDS", 2)
    connections = env_int("CONNECTIONS", 50)
    streams = env_int("H2_STREAMS", 10)
    grpc_calls = env_int("GRPC_CALLS", 50)
    grpc_connections = env_int("GRPC_CONNECTIONS", 4)
    rss_target = env_int("RSS_REQUESTS", 1_000_000)

    with tempfile.TemporaryDirectory(prefix="reqscope-bench-") as log_dir:
        # One run per row: (key, group, stack, how to load it for some seconds).
        drivers = {
            "http": lambda port, secs: wrk(port, secs, connections),
            "h2c": lambda port, secs: h2load(port, secs, connections, streams, log_dir),
            "grpc": lambda port, secs: load_client(
                binary, ["grpc-load", f"127.0.0.1:{port}", secs, grpc_calls, grpc_connections, TOKEN]),
            "ws": lambda port, secs: load_client(binary, ["ws-load", f"127.0.0.1:{port}", secs, connections, TOKEN]),
        }
        runs = [(f"h2c:{stack}" if group == "h2c" else stack, group, stack)
                for group, stacks in groups.items() for stack in stacks]
        results = {key: [] for key, _, _ in runs}
        served = {key: 0 for key, _, _ in runs}
        sink = None
        if any(stack == "full-otlp" for _, _, stack in runs):
            sink = start(["taskset", "-c", "1", binary, "otlp-sink", f"127.0.0.1:{SINK_PORT}"], SINK_PORT)
        servers = {}
        try:
            for i, (key, group, stack) in enumerate(runs):
                # h2 logs DEBUG and TRACE events of its own: the h2c servers keep to INFO.
                env = {"BENCH_MAX_LEVEL": "info"} if group == "h2c" else None
                servers[key] = Server(binary, stack, PORT_BASE + i, log_dir, key.replace(":", "-"), env)
            for key, group, _ in runs:
                served[key] += drivers[group](servers[key].port, warmup)[0]
                servers[key].truncate_log()
            for round_no in range(rounds):
                for key, group, _ in runs:
                    server = servers[key]
                    before = cpu_ticks(server.proc.pid), writer_ticks(server.proc.pid)
                    requests, rps, p99 = drivers[group](server.port, seconds)
                    served[key] += requests
                    ticks = cpu_ticks(server.proc.pid) - before[0]
                    cpu_us = ticks / CLK_TCK * 1e6 / requests
                    writer_us = (writer_ticks(server.proc.pid) - before[1]) / CLK_TCK * 1e6 / requests
                    results[key].append((rps, cpu_us, p99, writer_us))
                    server.truncate_log()
                    print(f"round {round_no + 1}/{rounds} {key:22} {rps:10,.0f} /s {cpu_us:6.2f} µs CPU/op p99 {p99:7.0f} µs",
                          file=sys.stderr)
            peaks = {key: status_kib(s.proc.pid, "VmHWM") for key, s in servers.items()}
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
        marks = rss_phase(binary, PORT_BASE + len(runs), log_dir, rss_target, connections) if rss_target else {}

    by_group = {group: [] for group in groups}
    for key, group, stack in runs:
        rps = statistics.median(r[0] for r in results[key])
        cpu = statistics.median(r[1] for r in results[key])
        p99 = statistics.median(r[2] for r in results[key])
        writer = statistics.median(r[3] for r in results[key])
        by_group[group].append({"stack": stack, "rps": rps, "cpu_us": cpu, "p99": p99, "rss": peaks[key],
                                "writer_us": writer, "cpu_min": min(r[1] for r in results[key])})
    rows = by_group["http"]

    cpu_model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                      if l.startswith("model name")), "unknown CPU")
    lines = [
        f"Machine: {os.cpu_count()} × {cpu_model}; server pinned to CPU 0 (one tokio worker), wrk -t1 -c{connections} pinned to CPU 1.",
        f"{rounds} interleaved rounds of {seconds} s per stack after a {warmup} s warm-up; medians. "
        "CPU µs/req = the server process's user+system time over the requests wrk completed; "
        "of it, the log writer's thread (formatting is the request's; the writer copies lines to the file). "
        "Fastest round: each stack's least CPU per request of all rounds, beside bare axum's — interference "
        "from the rest of the host only ever adds, so on a VM whose speed comes and goes it is the steadier figure.",
    ]
    if rows:
        base = next((r for r in rows if r["stack"] == "bare"), rows[0])
        tower = next((r for r in rows if r["stack"] == "tower-http"), None)
        lines += [
            "",
            "| stack | req/s | × bare | server CPU µs/req | Δ vs bare | fastest round, Δ | of it, log writer | p99 latency | peak RSS |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {LABELS[r['stack']]} | {r['rps']:,.0f} | {r['rps'] / base['rps']:.2f} | {r['cpu_us']:.2f} | "
                f"{r['cpu_us'] - base['cpu_us']:+.2f} | {r['cpu_min']:.2f}, {r['cpu_min'] - base['cpu_min']:+.2f} | "
                f"{r['writer_us']:.2f} | {r['p99']:.0f} µs | {r['rss'] / 1024:.1f} MiB |"
            )
        if tower:
            for r in rows:
                if r["stack"] in ("full", "full-verify-each"):
                    lines += ["", f"{LABELS[r['stack']]} vs tower-http stack: {r['rps'] / tower['rps']:.2f}× the throughput, "
                                  f"{tower['cpu_us'] / r['cpu_us']:.2f}× less server CPU per request "
                                  f"({tower['cpu_min'] / r['cpu_min']:.2f}× in the fastest rounds)."]
    if by_group["h2c"]:
        lines += group_table(by_group["h2c"], "req", f"HTTP/2 cleartext (h2c, prior knowledge), the same stacks under "
                             f"h2load -t1 -c{connections} -m{streams} pinned to CPU 1; against the first row:",
                             lambda r: LABELS[r["stack"]] + " (h2c)")
    if by_group["grpc"]:
        grpc = by_group["grpc"]
        lines += group_table(grpc, "call", f"gRPC, unary Users/GetUser on tonic::transport::Server, {grpc_calls} concurrent "
                             f"calls over {grpc_connections} HTTP/2 connections (bench-server grpc-load, pinned to CPU 1):",
                             lambda r: GRPC_LABELS[r["stack"]])
        bare = next((r for r in grpc if r["stack"] == "grpc-bare"), None)
        logged = next((r for r in grpc if r["stack"] == "grpc-context-log"), None)
        if bare and logged:
            delta = logged["cpu_us"] - bare["cpu_us"]
            fastest = logged["cpu_min"] - bare["cpu_min"]
            lines += ["", f"gRPC context + 1 line over bare tonic: {delta:+.2f} µs server CPU per call, "
                          f"{fastest:+.2f} µs in the fastest rounds (target ≤ +1.5 µs: "
                          f"{'met' if delta <= 1.5 else 'missed'} on the medians)."]
    if by_group["ws"]:
        lines += group_table(by_group["ws"], "msg", f"WebSocket, {connections} connections each sending a text message and "
                             "awaiting its echo (bench-server ws-load, pinned to CPU 1); per message:",
                             lambda r: WS_LABELS[r["stack"]])
    if exported is not None:
        requests = sum(served[key] for key, _, stack in runs if stack == "full-otlp")
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
    if rows:
        svg_chart(rows, out_dir / "http.svg")
    print(f"\nwrote {out_dir / 'http.md'} and {out_dir / 'http.svg'}", file=sys.stderr)


if __name__ == "__main__":
    main()
