#!/usr/bin/env python3
"""respmesh benchmark: direct Redis, twemproxy and respmesh-proxy, side by side, in one run.

Usage: scripts/bench.py PROXY_BINARY [--requests N] [--runs R]

Everything runs on 127.0.0.1. For every target the same redis-benchmark runs (GET and SET,
50 clients, pipeline 1 and 16); the proxy's CPU time comes from /proc (schedstat of all its
threads, in nanoseconds) around each run. Reported as ratios to twemproxy and to direct Redis.
This is a benchmark, not a test: it prints a table and never fails on the numbers.
"""
import argparse
import csv
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def cpu_ns(pid):
    """CPU time of every thread of `pid`, in ns (first field of each schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# Where the processes run (two or more cores; with one, everything shares it):
# - pod (the default): Redis on its own cores, as on its own hosts in production; the load
#   generator and the proxy on the others, as an application and its sidecar share their pod's
#   CPUs. Direct Redis and twemproxy are measured the same way.
# - shared: no pinning; the scheduler places everything. On a 2-core machine it decides run by
#   run whether Redis shares the proxy's core (every upstream send then wakes a Redis process
#   that preempts the proxy), which moves every proxy's CPU per request by up to a third.
# - split: the proxies alone on the last core, Redis and the load generator on the others.
CORES = os.cpu_count() or 1
LAYOUTS = ("pod", "shared", "split")
REDIS_CPUS = []
BENCH_CPUS = []
PROXY_CPUS = []


def cpu_list(cpus):
    return [",".join(str(c) for c in cpus)]


def set_layout(layout):
    global REDIS_CPUS, BENCH_CPUS, PROXY_CPUS
    if CORES < 2 or layout == "shared":
        return
    if layout == "pod":
        half = CORES // 2
        REDIS_CPUS = cpu_list(range(half))
        BENCH_CPUS = PROXY_CPUS = cpu_list(range(half, CORES))
    else:
        PROXY_CPUS = [str(CORES - 1)]
        REDIS_CPUS = BENCH_CPUS = cpu_list(range(CORES - 1))


def describe_layout(layout):
    if not REDIS_CPUS:
        return f"{CORES} cores shared by all"
    if layout == "pod":
        return f"Redis on CPU {REDIS_CPUS[0]}; redis-benchmark and the proxies on CPU {PROXY_CPUS[0]}"
    return f"proxies on CPU {PROXY_CPUS[0]}; Redis and redis-benchmark on CPU {REDIS_CPUS[0]}"


def pinned(cpus, args):
    return ["taskset", "-c", cpus[0]] + args if cpus else args


def pin_process(pid, cpus):
    """Moves every thread of a running process to `cpus`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def redis_benchmark(port, test, clients, pipeline, requests, cluster=False, cpus=None):
    out = subprocess.run(
        pinned(cpus or BENCH_CPUS, ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", test, "-c", str(clients),
         "-P", str(pipeline), "-n", str(requests), "-r", "100000", "-d", "16", "--csv"]
               + (["--cluster"] if cluster else [])),
        check=True, capture_output=True, text=True,
    ).stdout
    # In --cluster mode, redis-benchmark prints the cluster's nodes before the CSV.
    out = out[out.index('"test"'):]
    rows = list(csv.DictReader(io.StringIO(out)))
    row = rows[0]
    return float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"])


class Procs:
    def __init__(self):
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="respmesh-bench-")

    def start(self, args, port):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(port)
        return p

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# Per-run CPU microseconds per request, by (test, pipeline, target): the runs of different
# targets with the same index ran back to back, so their ratios pair up.
PER_RUN = {}

# Admin ports of the respmesh targets whose upstream batches are counted, by target name; and
# the median requests per upstream write, by (test, pipeline, target).
ADMIN = {}
BATCH = {}

# Redis's own CPU microseconds per request behind each target (median), by (test, pipeline,
# target), for the runs given Redis's pid: a proxy's batching shows in what Redis spends.
REDIS_CPU = {}


def upstream_batches(admin_port):
    """The proxy's writes of request batches to its shared upstream connections so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("respmesh_proxy_upstream_batches_total"))


# SETs that load the keys before the GET rows (see `measure`).
LOAD_SETS = 1_000_000


def measure(rows, targets, runs, requests, redis_pid=None, load=None):
    """GET and SET at pipeline 1 and 16 on every target, interleaved; medians into `rows`.

    targets: (name, port, pid of the proxy or None, whether redis-benchmark runs --cluster).
    redis_pid: the one Redis behind every target, whose CPU per request goes into REDIS_CPU.
    load: the names of the targets to write the keys through, one per Redis (or cluster) not
    yet loaded; by default the first target.
    """
    # GET reads values: every key redis-benchmark draws from (-r 100000) is written first, as
    # a 16-byte value (a million random SETs leave about 5 of the 100,000 keys unwritten).
    # Against an empty Redis every GET would miss, and each reply would be a 5-byte nil.
    for name, port, _, cluster in targets:
        if name in (load if load is not None else [targets[0][0]]):
            redis_benchmark(port, "set", 50, 16, LOAD_SETS, cluster=cluster)
    for test in ("get", "set"):
        for pipeline in (1, 16):
            n = requests * (4 if pipeline > 1 else 1)
            for _, port, _, cluster in targets:
                redis_benchmark(port, test, 50, pipeline, n // 10, cluster=cluster)
            samples = {name: [] for name, _, _, _ in targets}
            batches = {name: [] for name, _, _, _ in targets if name in ADMIN}
            redis_cpu = {name: [] for name, _, _, _ in targets}
            for _ in range(runs):
                for name, port, pid, cluster in targets:
                    c0 = cpu_ns(pid) if pid else 0
                    r0 = cpu_ns(redis_pid) if redis_pid else 0
                    b0 = upstream_batches(ADMIN[name]) if name in ADMIN else 0
                    rps, p50, p99 = redis_benchmark(port, test, 50, pipeline, n, cluster=cluster)
                    c1 = cpu_ns(pid) if pid else 0
                    if redis_pid:
                        redis_cpu[name].append((cpu_ns(redis_pid) - r0) / n / 1000.0)
                    if name in ADMIN:
                        batches[name].append(n / max(upstream_batches(ADMIN[name]) - b0, 1))
                    samples[name].append((rps, p50, p99, (c1 - c0) / n / 1000.0 if pid else None))
            for name, b in batches.items():
                BATCH[(test, pipeline, name)] = statistics.median(b)
            for name, r in redis_cpu.items():
                if r:
                    REDIS_CPU[(test, pipeline, name)] = statistics.median(r)
            for name, s in samples.items():
                PER_RUN[(test, pipeline, name)] = [x[3] for x in s]
                rows[(test, pipeline, name)] = (
                    statistics.median(x[0] for x in s),
                    statistics.median(x[1] for x in s),
                    statistics.median(x[2] for x in s),
                    statistics.median(x[3] for x in s) if s[0][3] is not None else None,
                )


def start_cluster_node(procs):
    """A cluster-enabled redis-server on a free port whose bus port (+10000) is free too."""
    while True:
        p = free_port()
        if p < 55000:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
            break
    d = os.path.join(procs.dir, f"node-{p}")
    os.makedirs(d)
    procs.start(pinned(REDIS_CPUS, ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", d, "--cluster-enabled", "yes",
                                    "--cluster-config-file", "nodes.conf"]), p)
    return p


def start_cluster(procs, nodes=6, replicas=1):
    """Six redis-server nodes, 3 primaries and 3 replicas (or `nodes` with `replicas` per
    primary); or one node serving every slot. Returns the node ports."""
    ports = [start_cluster_node(procs) for _ in range(nodes)]
    if nodes == 1:
        subprocess.run(["redis-cli", "-p", str(ports[0]), "cluster", "addslotsrange", "0", "16383"],
                       check=True, capture_output=True)
    else:
        subprocess.run(["redis-cli", "--cluster", "create"] + [f"127.0.0.1:{p}" for p in ports]
                       + ["--cluster-replicas", str(replicas), "--cluster-yes"], check=True, capture_output=True)
    deadline = time.time() + 30
    for p in ports:
        while "cluster_state:ok" not in subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"],
                                                       capture_output=True, text=True).stdout:
            if time.time() > deadline:
                raise RuntimeError("the benchmark cluster did not come up")
            time.sleep(0.1)
    return ports


def idle_connections_rss(port, pid, count=1000):
    """RSS of the proxy idle, and its growth per idle client connection (after one PING each)."""
    time.sleep(0.3)
    before = rss_kib(pid)
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"PING\r\n")
        socks.append(s)
    for s in socks:
        s.recv(16)
    time.sleep(0.5)
    after = rss_kib(pid)
    for s in socks:
        s.close()
    return before, (after - before) / count


def run_spread(test, pipeline, name, base):
    """The smallest and largest per-run ratio of `name`'s CPU per request to `base`'s."""
    pairs = [a / b for a, b in zip(PER_RUN[(test, pipeline, name)], PER_RUN[(test, pipeline, base)]) if a and b]
    return f"(runs {min(pairs):.2f}-{max(pairs):.2f}x)" if pairs else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("proxy")
    ap.add_argument("--requests", type=int, default=300000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--layout", choices=LAYOUTS, default="pod", help="where the processes run (see LAYOUTS)")
    args = ap.parse_args()
    set_layout(args.layout)

    procs = Procs()
    try:
        redis_port = free_port()
        redis = procs.start(pinned(REDIS_CPUS, ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                                "--save", "", "--appendonly", "no", "--dir", procs.dir]), redis_port)

        tw_port, tw_stats = free_port(), free_port()
        conf = os.path.join(procs.dir, "nutcracker.yml")
        with open(conf, "w") as f:
            f.write(f"""bench:
  listen: 127.0.0.1:{tw_port}
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  server_connections: 1
  servers:
    - 127.0.0.1:{redis_port}:1
""")
        tw = procs.start(pinned(PROXY_CPUS, ["nutcracker", "-c", conf, "-s", str(tw_stats), "-a", "127.0.0.1",
                                             "-o", os.path.join(procs.dir, "nutcracker.log")]), tw_port)

        def respmesh(*flags):
            """A respmesh-proxy with the admin port on (its upstream batches are counted)."""
            port, admin = free_port(), free_port()
            p = procs.start(pinned(PROXY_CPUS, [args.proxy, "--listen", f"127.0.0.1:{port}", "--admin",
                                                f"127.0.0.1:{admin}", "--log-level", "warn", *flags]), port)
            return port, p, admin

        rm_port, rm, ADMIN["respmesh"] = respmesh("--upstream", f"127.0.0.1:{redis_port}")

        targets = [("direct", redis_port, None, False), ("twemproxy", tw_port, tw.pid, False),
                   ("respmesh", rm_port, rm.pid, False)]
        rows = {}
        measure(rows, targets, args.runs, args.requests, redis_pid=redis.pid)

        # Policies: every key under a prefix route, every command mirrored (100%) to a second
        # Redis. redis-benchmark's keys all start with "key:".
        mirror_port = free_port()
        procs.start(pinned(REDIS_CPUS, ["redis-server", "--port", str(mirror_port), "--bind", "127.0.0.1",
                                        "--save", "", "--appendonly", "no", "--dir", procs.dir]), mirror_port)
        rp_port = free_port()
        rp_conf = os.path.join(procs.dir, "routes.yaml")
        with open(rp_conf, "w") as f:
            f.write(f"""apiVersion: proxy.respmesh.io/v1alpha1
kind: ProxyConfig
listeners: [{{address: "127.0.0.1:{rp_port}", service: front}}]
services:
  - host: backend
    endpoints: ["127.0.0.1:{redis_port}"]
  - host: shadow
    endpoints: ["127.0.0.1:{mirror_port}"]
  - host: front
    endpoints: ["127.0.0.1:{redis_port}"]
    routes:
      - match: {{key: {{prefix: "key:"}}}}
        route: {{host: backend}}
        mirror: [{{route: {{host: shadow}}, percentage: {{value: 100}}}}]
      - route: {{host: backend}}
""")
        rp = procs.start(pinned(PROXY_CPUS, [args.proxy, "--config", rp_conf, "--admin", "off",
                                             "--log-level", "warn"]), rp_port)
        # Plain respmesh again, interleaved with the policy runs: the ratio compares runs made
        # under the same conditions, not minutes apart.
        measure(rows, [("respmesh-plain", rm_port, rm.pid, False), ("respmesh-policy", rp_port, rp.pid, False)],
                args.runs, args.requests, load=[])

        # Redis Cluster: direct (a cluster-aware redis-benchmark) and respmesh in CLUSTER mode.
        # Also a cluster of one node: CLUSTER mode's own cost, without spreading the load.
        cports = start_cluster(procs)
        rc_port, rc, ADMIN["respmesh-cluster"] = respmesh("--upstream", f"127.0.0.1:{cports[0]}", "--mode", "cluster")
        one = start_cluster(procs, nodes=1)
        r1_port, r1, ADMIN["respmesh-cluster1"] = respmesh("--upstream", f"127.0.0.1:{one[0]}", "--mode", "cluster")
        # And three primaries without replicas: on this machine the replicas share Redis's
        # core with the primaries, which SET keeps busy feeding them.
        three = start_cluster(procs, nodes=3, replicas=0)
        r3_port, r3, ADMIN["respmesh-cluster3"] = respmesh("--upstream", f"127.0.0.1:{three[0]}", "--mode", "cluster")
        # Standalone respmesh again, interleaved with the cluster runs (same conditions).
        ADMIN["standalone"] = ADMIN["respmesh"]
        measure(rows, [("standalone", rm_port, rm.pid, False), ("direct-cluster", cports[0], None, True),
                       ("respmesh-cluster", rc_port, rc.pid, False), ("respmesh-cluster1", r1_port, r1.pid, False),
                       ("respmesh-cluster3", r3_port, r3.pid, False)],
                args.runs, args.requests, load=["direct-cluster", "respmesh-cluster1", "respmesh-cluster3"])

        # One client, no pipelining: the latency the proxy adds, and what one request costs the
        # proxy when it is alone. Also respmesh with --busy-poll 50us (it polls instead of
        # sleeping for 50 us after each read), interleaved with the others.
        bp_port, bp, _ = respmesh("--upstream", f"127.0.0.1:{redis_port}", "--busy-poll", "50us")
        lat_targets = targets + [("respmesh-busy-poll", bp_port, bp.pid, False)]
        p50s = {name: [] for name, _, _, _ in lat_targets}
        cpu1 = {name: [] for name, _, pid, _ in lat_targets if pid}
        for _ in range(args.runs):
            for name, port, pid, _ in lat_targets:
                c0 = cpu_ns(pid) if pid else 0
                p50s[name].append(redis_benchmark(port, "get", 1, 1, 20000)[1] * 1000.0)
                if pid:
                    cpu1[name].append((cpu_ns(pid) - c0) / 20000 / 1000.0)
        lat = {name: statistics.median(v) for name, v in p50s.items()}
        lat_cpu = {name: statistics.median(v) for name, v in cpu1.items()}
        # The same with every process on one CPU: what the proxy's own work adds, without the
        # cross-CPU wake-ups (expensive on virtual machines) that the two-CPU layouts pay.
        one_cpu = {}
        if CORES >= 2:
            servers = [redis.pid, tw.pid, rm.pid]
            before = {pid: os.sched_getaffinity(pid) for pid in servers}
            for pid in servers:
                pin_process(pid, {0})
            for name, port, _, _ in targets:
                p50s = [redis_benchmark(port, "get", 1, 1, 20000, cpus=["0"])[1] for _ in range(args.runs)]
                one_cpu[name] = statistics.median(p50s) * 1000.0
            for pid in servers:
                pin_process(pid, before[pid])

        rss_idle, per_conn = idle_connections_rss(rm_port, rm.pid)
        tw_idle, tw_per_conn = idle_connections_rss(tw_port, tw.pid)
    finally:
        procs.stop()

    print()
    layout = f"{args.layout} layout: {describe_layout(args.layout)}"
    print(f"respmesh benchmark ({args.runs} runs each, medians; redis-benchmark -c 50 -d 16; 127.0.0.1; {layout})")
    print()
    hdr = f"{'test':<5} {'P':>3} {'target':<10} {'ops/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'CPU vs tw':>9} {'ops vs tw':>9} {'ops vs direct':>13} {'Redis us/req':>12}"
    print(hdr)
    print("-" * len(hdr))
    for test in ("get", "set"):
        for pipeline in (1, 16):
            tw_row = rows[(test, pipeline, "twemproxy")]
            d_row = rows[(test, pipeline, "direct")]
            for name in ("direct", "twemproxy", "respmesh"):
                rps, p50, p99, cpu = rows[(test, pipeline, name)]
                cpu_s = f"{cpu:10.2f}" if cpu is not None else f"{'-':>10}"
                cpu_r = f"{cpu / tw_row[3]:8.2f}x" if cpu is not None else f"{'-':>9}"
                print(f"{test.upper():<5} {pipeline:>3} {name:<10} {rps:>11,.0f} {p50:>7.3f} {p99:>7.3f} {cpu_s} {cpu_r} "
                      f"{rps / tw_row[0]:8.2f}x {rps / d_row[0]:12.2f}x {REDIS_CPU[(test, pipeline, name)]:12.2f}")
    print()
    print("Redis Cluster (3 primaries + 3 replicas): direct = redis-benchmark --cluster; respmesh in CLUSTER mode;")
    print("respmesh-cluster1: CLUSTER mode in front of a one-node cluster; respmesh-cluster3: three primaries, no")
    print("replicas; standalone: respmesh in front of one Redis, run again between the cluster runs.")
    print("Req/write: requests per upstream write")
    print()
    hdr2 = (f"{'test':<5} {'P':>3} {'target':<17} {'ops/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
            f"{'CPU vs standalone':>17} {'req/write':>9}")
    print(hdr2)
    print("-" * len(hdr2))
    for test in ("get", "set"):
        for pipeline in (1, 16):
            for name in ("standalone", "direct-cluster", "respmesh-cluster", "respmesh-cluster1", "respmesh-cluster3"):
                rps, p50, p99, cpu = rows[(test, pipeline, name)]
                cpu_s = f"{cpu:10.2f}" if cpu is not None else f"{'-':>10}"
                ratio = f"{cpu / rows[(test, pipeline, 'standalone')][3]:16.2f}x" if cpu is not None else f"{'-':>17}"
                per_write = BATCH.get((test, pipeline, name))
                per_write = f"{per_write:9.1f}" if per_write else f"{'-':>9}"
                print(f"{test.upper():<5} {pipeline:>3} {name:<17} {rps:>11,.0f} {p50:>7.3f} {p99:>7.3f} {cpu_s} {ratio} {per_write}")
    print()
    print("Policies: a prefix route and a 100% mirror to a second Redis (every command sent twice), against plain")
    print("respmesh run between the policy runs")
    print()
    hdr3 = f"{'test':<5} {'P':>3} {'target':<16} {'ops/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'CPU vs plain':>12}"
    print(hdr3)
    print("-" * len(hdr3))
    for test in ("get", "set"):
        for pipeline in (1, 16):
            plain = rows[(test, pipeline, "respmesh-plain")][3]
            for name in ("respmesh-plain", "respmesh-policy"):
                rps, p50, p99, cpu = rows[(test, pipeline, name)]
                print(f"{test.upper():<5} {pipeline:>3} {name:<16} {rps:>11,.0f} {p50:>7.3f} {p99:>7.3f} {cpu:10.2f} "
                      f"{cpu / plain:11.2f}x")
    print()
    print("Targets (respmesh, same run):")
    checks = []
    for test in ("get", "set"):
        for pipeline, limit in ((1, 0.8), (16, 0.5)):
            r = rows[(test, pipeline, "respmesh")][3] / rows[(test, pipeline, "twemproxy")][3]
            spread = run_spread(test, pipeline, "respmesh", "twemproxy")
            checks.append((f"CPU/req vs twemproxy, {test.upper()} P{pipeline}", f"{r:.2f}x {spread}", f"<= {limit}x", r <= limit))
            t = rows[(test, pipeline, "respmesh")][0] / rows[(test, pipeline, "twemproxy")][0]
            checks.append((f"throughput vs twemproxy, {test.upper()} P{pipeline}", f"{t:.2f}x", ">= 1.00x", t >= 1.0))
    for test in ("get", "set"):
        for pipeline in (1, 16):
            r = rows[(test, pipeline, "respmesh-cluster")][3] / rows[(test, pipeline, "standalone")][3]
            spread = run_spread(test, pipeline, "respmesh-cluster", "standalone")
            r3 = rows[(test, pipeline, "respmesh-cluster3")][3] / rows[(test, pipeline, "standalone")][3]
            checks.append((f"CLUSTER CPU/req vs standalone, {test.upper()} P{pipeline}",
                           f"{r:.2f}x {spread}; no replicas {r3:.2f}x", "<= 1.2x", r <= 1.2))
    added = lat["respmesh"] - lat["direct"]
    checks.append(("added p50 latency, 1 client, P1", f"{added:.0f} us (direct {lat['direct']:.0f}, twemproxy {lat['twemproxy']:.0f}, respmesh {lat['respmesh']:.0f})", "<= 30 us", added <= 30))
    added_bp = lat["respmesh-busy-poll"] - lat["direct"]
    checks.append(("  the same with --busy-poll 50us", f"{added_bp:.0f} us (respmesh --busy-poll 50us {lat['respmesh-busy-poll']:.0f})", "<= 30 us", added_bp <= 30))
    checks.append(("RSS idle", f"{rss_idle / 1024:.1f} MiB (twemproxy {tw_idle / 1024:.1f})", "<= 10 MiB", rss_idle <= 10 * 1024))
    checks.append(("RSS per idle client connection (1,000)", f"{per_conn:.1f} KiB (twemproxy {tw_per_conn:.1f})", "<= 16 KiB", per_conn <= 16))
    for what, got, want, ok in checks:
        print(f"  {what:<40} {got:<60} target {want:<9} {'met' if ok else 'NOT met'}")
    print()
    print(f"  One client, P1, proxy CPU per request: twemproxy {lat_cpu['twemproxy']:.1f} us, respmesh {lat_cpu['respmesh']:.1f} us, "
          f"respmesh --busy-poll 50us {lat_cpu['respmesh-busy-poll']:.1f} us (it polls while it waits)")
    if one_cpu:
        print()
        print(f"  For reference, every process on one CPU (no cross-CPU wake-ups): p50 direct {one_cpu['direct']:.0f} us, "
              f"twemproxy {one_cpu['twemproxy']:.0f} us, respmesh {one_cpu['respmesh']:.0f} us: "
              f"respmesh adds {one_cpu['respmesh'] - one_cpu['direct']:.0f} us, twemproxy {one_cpu['twemproxy'] - one_cpu['direct']:.0f} us")
    print()


if __name__ == "__main__":
    sys.exit(main())
