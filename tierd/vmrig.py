"""The QEMU test rig: boots tierd's patched kernel on an emulated two-tier NUMA machine.

Node 0 has the CPUs and the fast memory, node 1 is memory-only slow memory; ACPI HMAT gives
node 1 a higher latency and lower bandwidth, so Linux (>= 6.1, memory tiers) puts it in a
lower tier and makes it node 0's demotion target.  The host's root filesystem is the guest's
root, shared read-only over 9p, so the guest runs the host's Python and the project's venv.
The guest's init mounts the pseudo filesystems, a tmpfs scratch on /mnt/scratch ($TMPDIR),
and a writable share from the host on /mnt/out, runs one command as root, records its exit code and powers off.

Used by tests/vm and benchmarks/, and from the command line::

    python -m tierd.vmrig [--kernel DIR] [--fast 512M --slow 1536M] -- COMMAND [ARG...]
    python -m tierd.vmrig --one-node --systemd -- COMMAND   # a host that cannot tier

``--one-node`` (``Machine(slow="0")``) boots one NUMA node with all the memory and no HMAT:
the machine on which tierd must refuse to run (exit 69), tests/vm/test_vm_systemd.py.

The command's output is printed and its exit code is ours; the kernel console goes to
OUT/console.log.  Only software emulation is used: KVM on CI hosts is unreliable or absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "kernel" / "build.sh"

# Kernel arguments for a 9p root.  cache=loose: the root is read-only and nobody changes
# it under the guest, and it roughly halves Python start-up time.
ROOT_ARGS = ("root=hostroot rootfstype=9p ro "
             "rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose")
SHARE_OPTS = "trans=virtio,version=9p2000.L,msize=512000"

# The guest init.  It runs from the read-only host root, so it only writes to a tmpfs
# scratch ($TMPDIR, $HOME) and to the out share.  /tmp stays the host's (read-only): the
# project and its venv may live there (CI clones into /tmp) and must keep their paths.  Automatic NUMA balancing is on by default and would compete with tierd
# (and with tests that place pages by hand), so it is switched off.
INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /mnt
mkdir -p /mnt/out /mnt/scratch
mount -t 9p -o {share_opts} out /mnt/out
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
# loopback up, as on any system: tierd's metrics listener binds 127.0.0.1 (the live demo)
ip link set lo up 2>/dev/null
echo 0 > /proc/sys/kernel/numa_balancing 2>/dev/null
export HOME=/mnt/scratch TMPDIR=/mnt/scratch
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONDONTWRITEBYTECODE=1 TIERD_IN_VM=1 TIERD_VM_OUT=/mnt/out
{env}
cd /mnt/scratch
echo "tierd-vm: running"
( sh /mnt/out/cmd; echo $? > /mnt/out/rc ) 2>&1 | tee /mnt/out/output
sync
echo o > /proc/sysrq-trigger
sleep 10
"""


# The guest init for a systemd boot (``run(..., systemd=True)``): systemd needs a writable
# root, so the read-only host root becomes the lower layer of an overlay whose upper layer
# is a tmpfs; init pivots into it and execs systemd as PID 1, which boots tierd-rig.target:
# basic.target (journald, udev, tmpfiles) plus tierd-rig.service, which runs the command
# and powers off.  The host's own enabled services, timers and fstab are left out of the
# overlay so the guest boots only what the tests need.
INIT_SYSTEMD = """#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t tmpfs tmpfs /mnt
mkdir -p /mnt/upper /mnt/work /mnt/root
mount -t overlay overlay -o lowerdir=/,upperdir=/mnt/upper,workdir=/mnt/work /mnt/root
r=/mnt/root
mkdir -p $r/mnt/out $r/oldroot
mount -t 9p -o {share_opts} out $r/mnt/out
rm -rf $r/etc/systemd/system/*.wants $r/etc/systemd/system/default.target
: > $r/etc/fstab
# libgcrypt (apt's hashes) picks its AVX+BMI2 SHA code on this CPU model (max with avx2=off
# still has BMI2), and that code uses an AVX2 instruction (vpbroadcastd): SIGILL.  No real
# CPU has BMI2 without AVX2; tell libgcrypt not to use BMI2 in the guest
mkdir -p $r/etc/gcrypt
echo intel-bmi2 > $r/etc/gcrypt/hwf.deny
# a container host's policy-rc.d ("exit 101": no service actions from packages) is not a
# Debian machine's: without it a package's maintainer scripts start and stop services
rm -f $r/usr/sbin/policy-rc.d
# systemd-tmpfiles --boot would empty /tmp, where the project may live (CI clones there),
# and walks the host's trees over 9p for a minute: nothing here needs it
for u in systemd-tmpfiles-setup.service systemd-tmpfiles-clean.timer; do
    ln -sf /dev/null $r/etc/systemd/system/$u
done
cat > $r/etc/systemd/system/tierd-rig.target <<'UNIT'
[Unit]
Description=tierd QEMU rig: basic system plus the test command
Requires=basic.target tierd-rig.service
After=basic.target tierd-rig.service
AllowIsolate=yes
UNIT
cat > $r/etc/systemd/system/tierd-rig.service <<'UNIT'
[Unit]
Description=tierd QEMU rig: the test command
After=basic.target
[Service]
Type=oneshot
Environment=HOME=/root PYTHONDONTWRITEBYTECODE=1 TIERD_IN_VM=1 TIERD_VM_OUT=/mnt/out
Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{env_unit}
WorkingDirectory=/root
StandardOutput=journal+console
StandardError=inherit
ExecStart=/bin/sh -c 'echo tierd-vm: running; (sh /mnt/out/cmd; echo $$? > /mnt/out/rc) 2>&1 | tee /mnt/out/output'
ExecStartPost=/bin/sh -c 'journalctl -b --no-pager > /mnt/out/journal.txt 2>&1; sync; echo o > /proc/sysrq-trigger'
TimeoutStartSec=infinity
UNIT
mkdir -p $r/root
umount /proc
cd $r
# pivot_root so that systemd sees a normal root; a chroot alone would also do
pivot_root . oldroot || echo "tierd-vm: pivot_root failed, chroot only"
exec chroot . /lib/systemd/systemd --unit=tierd-rig.target
"""


class VMError(RuntimeError):
    """The VM could not be built, booted, or did not finish in time."""


@dataclasses.dataclass(frozen=True)
class Machine:
    """Size of the emulated machine.  Sizes are QEMU size strings ("512M", "2G"); a slow
    size of "0" means no slow node: one NUMA node, one class of memory."""

    fast: str = "512M"
    slow: str = "1536M"
    cpus: int = 2
    fast_latency_ns: int = 80
    slow_latency_ns: int = 300
    fast_bandwidth: str = "20G"
    slow_bandwidth: str = "5G"


@dataclasses.dataclass(frozen=True)
class Result:
    returncode: int
    output: str
    console: str
    seconds: float


def missing_prerequisite() -> str | None:
    """Why the rig cannot boot on this host (for a test's skip message), or None."""
    if os.environ.get("TIERD_IN_VM"):
        return "already inside the VM"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 missing: run scripts/install-deps.sh --kernel"
    if not Path("/usr/src/linux-source-6.12.tar.xz").exists():
        return "linux-source-6.12 missing: run scripts/install-deps.sh --kernel"
    return None


def kernel_dir(build: bool = True) -> Path:
    """The cached rig kernel for the current series, built first if needed (kernel/build.sh)."""
    args = [str(BUILD_SCRIPT)] if build else [str(BUILD_SCRIPT), "--hash"]
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=None, text=True)
    if proc.returncode != 0:
        raise VMError(f"kernel/build.sh failed (exit {proc.returncode})")
    out = proc.stdout.strip().splitlines()[-1]
    if not build:
        cache = Path(os.environ.get("TIERD_CACHE",
                                    Path(os.environ.get("XDG_CACHE_HOME",
                                                        Path.home() / ".cache")) / "tierd"))
        return cache / "kernels" / out
    return Path(out)


def qemu_command(kernel: Path, machine: Machine, init: str, out: Path,
                 append: str = "") -> list[str]:
    """The qemu-system-x86_64 argv for the two-tier rig."""
    m = machine
    total = _mib(m.fast) + _mib(m.slow)
    two = _mib(m.slow) > 0
    hmat = []
    for node, lat, bw in ((0, m.fast_latency_ns, m.fast_bandwidth),
                          (1, m.slow_latency_ns, m.slow_bandwidth))[: 2 if two else 0]:
        base = f"initiator=0,target={node},hierarchy=memory"
        hmat += ["-numa", f"hmat-lb,{base},data-type=access-latency,latency={lat}",
                 "-numa", f"hmat-lb,{base},data-type=access-bandwidth,bandwidth={bw}"]
    slow_node = (["-object", f"memory-backend-ram,id=m1,size={m.slow}",
                  "-numa", "node,nodeid=1,memdev=m1,initiator=0"] if two else [])
    return [
        "qemu-system-x86_64",
        # -cpu max: numpy's SIMD dispatch dies with SIGILL on QEMU's default CPU model.
        # avx2=off: QEMU 7.2's TCG emulation of AVX2 (new in 7.2) makes numpy's AVX2
        # argsort (x86-simd-sort) return unsorted orders for 64-bit keys, which breaks
        # np.unique(return_inverse=True) and everything built on it.  Without AVX2 numpy
        # falls back to its SSE4.2 baseline, which sorts correctly (tests/vm/guest checks).
        "-machine", "q35,hmat=on" if two else "q35", "-cpu", "max,avx2=off", "-accel", "tcg",
        "-smp", str(m.cpus), "-m", f"{total}M",
        "-object", f"memory-backend-ram,id=m0,size={m.fast}",
        "-numa", f"node,nodeid=0,cpus=0-{m.cpus - 1},memdev=m0" + (",initiator=0" if two else ""),
        *slow_node,
        *hmat,
        "-kernel", str(kernel / "bzImage"),
        "-append", f"console=ttyS0 {ROOT_ARGS} init={init} panic=-1 loglevel=4 {append}",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
        "-virtfs", f"local,path={out},mount_tag=out,security_model=none,multidevs=remap",
        "-device", "virtio-rng-pci",
        "-display", "none", "-monitor", "none", "-serial", "stdio",
        "-no-reboot",
    ]


def run(command: list[str] | str, *, kernel: Path | None = None,
        machine: Machine = Machine(), timeout: float = 900, env: dict | None = None,
        out: Path | None = None, append: str = "", echo: bool = False,
        systemd: bool = False,
        on_line=None) -> Result:
    """Boot the rig, run ``command`` (argv list or shell string) as root, return its result.

    ``out`` is the host directory shared writable as /mnt/out (a temporary one by default);
    the guest also finds it in $TIERD_VM_OUT.  ``env`` adds environment variables.
    ``echo`` copies the console to stderr as it runs.  ``systemd``: boot systemd as PID 1
    on a writable overlay of the host root and run the command as a service
    (INIT_SYSTEMD); the guest's journal is saved to OUT/journal.txt.
    ``on_line`` (a callable) gets every console line as it arrives (the live demo shows the
    guest's output that way).
    """
    if shutil.which("qemu-system-x86_64") is None:
        raise VMError("qemu-system-x86_64 not found: run scripts/install-deps.sh --kernel")
    kernel = kernel or kernel_dir()
    if not (kernel / "bzImage").is_file():
        raise VMError(f"no bzImage in {kernel}")
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="tierd-vm-")
        out = Path(tmp.name)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name in ("rc", "output"):
            (out / name).unlink(missing_ok=True)
        script = command if isinstance(command, str) else shlex.join(command)
        (out / "cmd").write_text(script + "\n")
        init = out / "init"
        if systemd:
            # numa_balancing off from the start (there is no init script to do it later)
            append = f"numa_balancing=disable {append}".strip()
            env_unit = "\n".join(f"Environment={shlex.quote(f'{k}={v}')}"
                                  for k, v in (env or {}).items())
            init.write_text(INIT_SYSTEMD.format(share_opts=SHARE_OPTS, env_unit=env_unit))
        else:
            env_lines = "\n".join(f"export {k}={shlex.quote(str(v))}"
                                  for k, v in (env or {}).items())
            init.write_text(INIT.format(share_opts=SHARE_OPTS, env=env_lines))
        init.chmod(0o755)
        argv = qemu_command(kernel, machine, str(init), out, append)
        start = time.monotonic()
        console = _boot(argv, timeout, echo, on_line)
        seconds = time.monotonic() - start
        (out / "console.log").write_text(console)
        rc_file = out / "rc"
        if not rc_file.exists():
            raise VMError("the guest did not finish its command; console tail:\n"
                          + "\n".join(console.splitlines()[-30:]))
        output = (out / "output").read_text(errors="replace")
        return Result(int(rc_file.read_text().strip() or 255), output, console, seconds)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _boot(argv: list[str], timeout: float, echo: bool, on_line=None) -> str:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines = []
    try:
        assert proc.stdout is not None
        deadline = start + timeout
        os.set_blocking(proc.stdout.fileno(), True)
        while True:
            line = proc.stdout.readline()
            if not line:
                break
            text = line.decode(errors="replace").rstrip("\r\n")
            lines.append(text)
            if echo:
                print(text, file=sys.stderr, flush=True)
            if on_line is not None:
                on_line(text)
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(argv, timeout)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise VMError(f"the VM did not finish within {timeout:.0f} s; console tail:\n"
                      + "\n".join(lines[-30:])) from None
    lines.append(f"tierd-vm: qemu exited {proc.returncode} after "
                 f"{time.monotonic() - start:.1f} s")
    return "\n".join(lines) + "\n"


def _mib(size: str) -> int:
    units = {"M": 1, "G": 1024, "T": 1024 * 1024}
    size = size.strip().upper().rstrip("B").rstrip("I")
    if size[-1] in units:
        return int(float(size[:-1]) * units[size[-1]])
    return int(size) // (1024 * 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tierd.vmrig",
        description="Run a command as root in QEMU on tierd's patched kernel, "
                    "node 0 = CPUs + fast memory, node 1 = slow memory-only node.")
    parser.add_argument("--kernel", type=Path,
                        help="directory with bzImage (default: kernel/build.sh's cached build)")
    parser.add_argument("--fast", default=Machine.fast, help="node 0 memory (default %(default)s)")
    parser.add_argument("--slow", default=Machine.slow, help="node 1 memory (default %(default)s)")
    parser.add_argument("--cpus", type=int, default=Machine.cpus)
    parser.add_argument("--timeout", type=float, default=900, help="seconds (default %(default)s)")
    parser.add_argument("--out", type=Path, help="host directory shared as /mnt/out")
    parser.add_argument("--append", default="", help="extra kernel arguments")
    parser.add_argument("--console", action="store_true", help="echo the console to stderr")
    parser.add_argument("--systemd", action="store_true",
                        help="boot systemd as PID 1 and run the command as a service")
    parser.add_argument("--one-node", action="store_true",
                        help="one NUMA node with --fast memory (default 1G here) and no slow "
                        "node: a host that cannot tier")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    try:
        result = run(command, kernel=args.kernel,
                     machine=(Machine(fast="1G" if args.fast == Machine.fast else args.fast,
                                      slow="0", cpus=args.cpus) if args.one_node
                              else Machine(fast=args.fast, slow=args.slow, cpus=args.cpus)),
                     timeout=args.timeout, out=args.out, append=args.append,
                     echo=args.console, systemd=args.systemd)
    except VMError as exc:
        print(f"vmrig: {exc}", file=sys.stderr)
        return 125
    sys.stdout.write(result.output)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
