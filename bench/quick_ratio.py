#!/usr/bin/env python3
"""Side-by-side throughput of breakwater against Envoy's own floor, on one proxied route.

Variants, each an Envoy with --concurrency 1 and the same route to the same upstream (an Envoy
answering with direct_response, so the upstream is never the bottleneck):
  a  no HTTP filter but the router
  b  Envoy's native local_ratelimit with a bucket that never empties
  c  a no-op Rust proxy-wasm filter (one header read): the V8 floor
  d  breakwater, a matching policy with rate_limit + concurrency_limit + circuit_breaker + retry,
     nothing triggering
Rounds are interleaved (a b c d, a b c d, ...) and medians reported, because this 2-core machine
is noisy: only ratios measured in one run mean anything.

Usage: bench/quick_ratio.py [--rounds N] [--seconds S] [--out FILE]   (needs wrk and .tools/bin/envoy)
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.path.join(ROOT, ".tools/bin/envoy")
BREAKWATER_WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/breakwater_filter.wasm")
NOOP_WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/noop_filter.wasm")

POLICY = """
version: 1
policies:
  - name: bench
    match: { path_prefix: / }
    rate_limit: { rate: 1000000000, per: 1s, burst: 1000000000 }
    concurrency_limit: { max_in_flight: 100000 }
    circuit_breaker: { window: 100, minimum_calls: 20, failure_rate: 50 }
    retry: { max_retries: 2, retry_on: [5xx], budget: { percent: 20, min_per_second: 10 } }
    timeout: 5s
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wasm_filter(name, wasm, configuration):
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
                "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": wasm}}},
            },
        },
    }


LOCAL_RATELIMIT = {
    "name": "envoy.filters.http.local_ratelimit",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench",
        "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"},
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enabled"},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enforced"},
    },
}

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def bootstrap(port, admin, route, filters, clusters):
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
                        "http_filters": filters + [ROUTER],
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    }


class Envoy:
    def __init__(self, name, config, workdir):
        self.name = name
        path = os.path.join(workdir, f"{name}.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self.admin = config["admin"]["address"]["socket_address"]["port_value"]
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        self.proc = subprocess.Popen(
            [ENVOY, "-c", path, "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_ready(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name}: envoy exited; see {self.log.name}")
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        sys.exit(f"{self.name}: envoy not ready")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def wrk(port, seconds, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p50_ms = float(p50.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p50.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p50_ms, p99_ms, int(non2xx.group(1)) if non2xx else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--out")
    args = ap.parse_args()
    for f in (ENVOY, BREAKWATER_WASM, NOOP_WASM):
        if not os.path.exists(f):
            sys.exit(f"missing {f}: run ./dev bench (it builds and installs what is needed)")
    compiled = subprocess.run(
        [os.path.join(ROOT, "target/debug/breakwater"), "compile", "/dev/stdin"],
        input=POLICY, capture_output=True, text=True, check=True).stdout.strip()

    workdir = tempfile.mkdtemp(prefix="bw-bench-")
    up_port = free_port()
    upstream = Envoy("upstream", bootstrap(up_port, free_port(),
                                           {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}},
                                           [], []), workdir)
    cluster = [{"name": "up", "type": "STATIC", "connect_timeout": "1s",
                "circuit_breakers": {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000, "max_retries": 100000}]},
                "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": up_port}}}}]}]}}]
    route = {"match": {"prefix": "/"}, "route": {"cluster": "up"}}
    variants = {
        "a no filter": [],
        "b native local_ratelimit": [LOCAL_RATELIMIT],
        "c no-op wasm": [wasm_filter("noop", NOOP_WASM, "")],
        "d breakwater": [wasm_filter("breakwater", BREAKWATER_WASM, compiled)],
    }
    envoys = {}
    try:
        upstream.wait_ready()
        for name, filters in variants.items():
            port = free_port()
            envoys[name] = (port, Envoy(name.split()[0], bootstrap(port, free_port(), route, filters, cluster), workdir))
        for _, e in envoys.values():
            e.wait_ready()
        results = {name: [] for name in variants}
        for r in range(args.rounds):
            for name, (port, _) in envoys.items():
                results[name].append(wrk(port, args.seconds, args.connections))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n.split()[0]} {results[n][-1][0]:.0f}/s" for n in variants), flush=True)
    finally:
        for _, e in envoys.values():
            e.stop()
        upstream.stop()

    med = {n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
               statistics.median(x[2] for x in v), sum(x[3] for x in v)) for n, v in results.items()}
    lines = [
        f"Proxied route, Envoy 1.40 --concurrency 1, wrk -t1 -c{args.connections}, {args.rounds} interleaved rounds of {args.seconds} s, medians.",
        "",
        "| variant | requests/s | p50 ms | p99 ms | non-2xx |",
        "|---|---:|---:|---:|---:|",
    ]
    for n, (rps, p50, p99, bad) in med.items():
        lines.append(f"| {n} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {bad} |")
    a, b, c, d = (med[n][0] for n in variants)
    lines += ["", f"Ratios: b/a {b / a:.3f} · c/a {c / a:.3f} · d/a {d / a:.3f} · **d/b {d / b:.3f}** · **d/c {d / c:.3f}** · p99 d/c {med['d breakwater'][2] / med['c no-op wasm'][2]:.2f}"]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if any(m[3] for m in med.values()):
        sys.exit("some responses were not 2xx: the comparison is void")


if __name__ == "__main__":
    main()
