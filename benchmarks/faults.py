#!/usr/bin/env python3
"""Faults in the rig (issue 20): tierd SIGKILLed N times at random points of its migrations,
targets killed while sampled and moved, 100 SIGHUPs in one second, the metrics port taken at
start, 300 clients that never finish a request.

Run on the host (boots the rig once; only one VM at a time on a shared machine):

    flock /tmp/tierd-vm.lock .venv/bin/python benchmarks/faults.py [--kills 100] [-k EXPR]
    .venv/bin/python benchmarks/faults.py --host      # no VM: the metrics port and regexes

--host measures, on the host, against the old code paths in the same run: descriptors held
and scrape time with 1,100 half-sent requests on the metrics port (prometheus_client's
server, one thread per connection, against tierd.integrations.http), and one cmdline match
of `(a+)+$` against N a's and "!" (Python's re against RE2).

It runs tests/vm/guest/test_guest_faults.py in the guest with TIERD_FAULT_KILLS=N (the VM
test tier runs the same file with 10 kills) and prints what each fault did (the lines the
tests record), then the pytest result.  Recorded in benchmarks/README.md, RELIABILITY.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tierd import vmrig  # noqa: E402


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def flood(start, stop, n: int = 1100) -> tuple[int, float]:
    """(descriptors the server holds, seconds for one scrape) with n half-sent requests."""
    import socket
    import urllib.request

    port = start()
    before = _fds()
    clients = []
    try:
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")
            clients.append(c)
        time.sleep(1.0)
        held = _fds() - before - len(clients)
        t0 = time.monotonic()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
        return held, time.monotonic() - t0
    finally:
        for c in clients:
            c.close()
        stop()


def host() -> int:
    import resource
    import re

    import prometheus_client
    import re2

    from tierd.integrations.http import BoundedHTTPServer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    reg = prometheus_client.CollectorRegistry()
    box = {}

    def old_start():
        box["s"], _ = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=reg)
        return box["s"].server_address[1]

    def old_stop():
        box["s"].shutdown()
        box["s"].server_close()

    def new_start():
        box["s"] = BoundedHTTPServer("127.0.0.1", 0, lambda: (
            prometheus_client.CONTENT_TYPE_LATEST, prometheus_client.generate_latest(reg)))
        return box["s"].server_address[1]

    for name, start, stop in (("prometheus_client (old)", old_start, old_stop),
                              ("tierd.integrations.http", new_start, lambda: box["s"].close())):
        held, scrape = flood(start, stop)
        print(f"metrics port, 1100 half-sent requests: {name}: holds {held} descriptors, "
              f"a scrape takes {scrape * 1000:.0f} ms")
    opts = re2.Options()
    opts.log_errors = False
    for n in (18, 20, 22, 24):
        text = "a" * n + "!"
        t0 = time.perf_counter()
        re.compile(r"(a+)+$").search(text)
        t_re = time.perf_counter() - t0
        t0 = time.perf_counter()
        re2.compile(r"(a+)+$", opts).search(text)
        t_re2 = time.perf_counter() - t0
        print(f"cmdline '(a+)+$' against {n} a's and '!': re {t_re * 1000:.0f} ms, "
              f"RE2 {t_re2 * 1e6:.0f} us")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100, help="SIGKILLs of tierd (default 100)")
    ap.add_argument("-k", default="", help="pytest -k expression (default: every fault)")
    ap.add_argument("--host", action="store_true", help="host measurements only, no VM")
    args = ap.parse_args()
    if args.host:
        return host()
    import workloads

    workloads.build()
    out = Path(tempfile.mkdtemp(prefix="tierd-faults-"))
    sel = f"-k '{args.k}'" if args.k else ""
    script = (f"cd {REPO} && {sys.executable} -m pytest -p no:cacheprovider -q -rA {sel} "
              "tests/vm/guest/test_guest_faults.py")
    t0 = time.monotonic()
    kernel = vmrig.kernel_dir(build=False)  # built already: no wait for the build lock
    if not (kernel / "bzImage").is_file():
        kernel = vmrig.kernel_dir()
    result = vmrig.run(script, kernel=kernel, env={"TIERD_FAULT_KILLS": str(args.kills)},
                       out=out, timeout=60 * 60)
    faults = out / "faults.txt"
    print(faults.read_text() if faults.exists() else "(no fault recorded)")
    print(result.output[-3000:])
    print(f"guest exit {result.returncode}, {time.monotonic() - t0:.0f}s with the boot")
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
