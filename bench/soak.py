"""Checks and summarises a soak run: bench/soak.py STDOUT_JSONL CLIENT_TXT > soak.md"""

import json
import re
import sys
from collections import Counter, defaultdict

stdout_path, client_path = sys.argv[1], sys.argv[2]
client = open(client_path).read()

kinds = {}  # name -> (requests, unexpected, path)
order = []
for m in re.finditer(r"^expect kind=(\S+) requests=(\d+) unexpected=(\d+) path=(\S+)$", client, re.M):
    kinds[m[1]] = (int(m[2]), int(m[3]), m[4])
    order.append(m[1])
rss = [(int(m[1]), int(m[2]), int(m[3])) for m in re.finditer(r"^rss requests=(\d+) kib=(\d+) elapsed_s=(\d+)$", client, re.M)]
done = re.search(r"^done requests=(\d+) connections=(\d+) elapsed_s=([\d.]+) req_per_s=(\d+)$", client, re.M)
exit_status = re.search(r"^server exit status: (\d+)$", client, re.M)

per_id = defaultdict(list)
other = Counter()  # lines of requests whose id the server generated (the invalid-id kind)
dropped = 0
bad_json = 0
total_lines = 0
with open(stdout_path, "rb") as f:
    for raw in f:
        total_lines += 1
        try:
            line = json.loads(raw)
        except ValueError:
            bad_json += 1
            continue
        if isinstance(line.get("dropped"), int):
            dropped += line["dropped"]
        rid = line.get("request_id")
        if rid is None:
            continue
        if rid.startswith("soak-") or rid.startswith("cal-"):
            per_id[rid].append(line)
        else:
            other[(line.get("path"), line.get("target"))] += 1

shares = {"health": 38, "user": 15, "me": 10, "bad-token": 7, "invalid-id": 8, "fanout": 5, "stream": 1,
          "not-found": 6, "bad-user-id": 4, "chain": 6}
cycle = []
for name in ["health", "user", "me", "bad-token", "invalid-id", "fanout", "stream", "not-found", "bad-user-id", "chain"]:
    cycle += [name] * shares[name]

calibrated = {name: len(per_id.get(f"cal-{name}", [])) for name in order}
calibrated["invalid-id"] = calibrated.get("health", 0)

problems = []
seen = Counter()
written = Counter()
for rid, lines in per_id.items():
    if not rid.startswith("soak-"):
        continue
    n = int(rid[5:])
    kind = cycle[n % 100]
    seen[kind] += 1
    written[kind] += len(lines)
    path = kinds[kind][2].split("?")[0]
    for line in lines:
        if line.get("path") != path:
            problems.append(f"{rid} ({kind}) has a line of path {line.get('path')}")
        if kind == "me":
            if line.get("target") == "reqscope::access" and line.get("user_id") != "1":
                problems.append(f"{rid} access line without its user")
        elif line.get("user_id") is not None:
            problems.append(f"{rid} ({kind}) carries user {line.get('user_id')}")
    if len(lines) != calibrated[kind]:
        problems.append(f"{rid} ({kind}) has {len(lines)} lines, expected {calibrated[kind]}")

invalid_lines = other[("/health", "reqscope::access")]
seen["invalid-id"] = invalid_lines
written["invalid-id"] = invalid_lines

print("## Soak run\n")
if done:
    print(f"{int(done[1]):,} requests on {done[2]} connections over the example server (release build, SQLite in"
          f" memory, in-process rate limit), {float(done[3]):.0f} s, {int(done[4]):,} req/s; server stopped with"
          f" SIGTERM, exit status"
          f" {exit_status[1] if exit_status else '?'}.\n")
print("| kind | path | requests | unexpected answers | lines per request | lines expected | lines written |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
tot_req = tot_bad = tot_exp = tot_written = 0
for name in order:
    requests, unexpected, path = kinds[name]
    expected = requests * calibrated[name]
    tot_req += requests
    tot_bad += unexpected
    tot_exp += expected
    tot_written += written[name]
    print(f"| {name} | `{path}` | {requests:,} | {unexpected:,} | {calibrated[name]} | {expected:,} | {written[name]:,} |")
print(f"| **all** | | {tot_req:,} | {tot_bad:,} | | {tot_exp:,} | {tot_written:,} |\n")

print("| RSS sample | requests done | RSS |")
print("| --- | ---: | ---: |")
picks = rss if len(rss) <= 8 else [rss[int(i * (len(rss) - 1) / 7)] for i in range(8)]
for requests, kib, elapsed in picks:
    print(f"| {elapsed} s | {requests:,} | {kib / 1024:.1f} MiB |")
if len(rss) >= 4:
    quarter = rss[len(rss) // 4][1]
    last = rss[-1][1]
    print(f"\nRSS from a quarter of the run to the end: {quarter / 1024:.1f} → {last / 1024:.1f} MiB"
          f" ({(last - quarter) / quarter * 100:+.1f}%).")
print(f"\nLines: {total_lines:,} in all, {bad_json} not JSON, {dropped} reported dropped;"
      f" {len(problems)} lines or requests out of place (another request's path or user, a wrong count).")
for p in problems[:20]:
    print(f"- {p}")
ok = tot_bad == 0 and bad_json == 0 and dropped == 0 and not problems and tot_exp == tot_written
print(f"\nResult: {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
