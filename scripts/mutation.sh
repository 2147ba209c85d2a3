#!/usr/bin/env bash
# Mutation score of the engine and the kernel boundary (issue 10): plants single-line bugs
# with mutmut (pip extra [mutation]) in the modules below and counts how many the unit tier
# notices.  Slow (tens of minutes on 2 cores), so not part of CI; results go in
# benchmarks/README.md.
#
#   scripts/mutation.sh [REV] [OUT]
#   MUTATION_SAMPLE=4 scripts/mutation.sh ...     # a fixed quarter of the mutants (~35 min)
#
# REV (default: the working tree) is a git revision to measure instead, e.g. `main` for the
# score before a change, so "before" and "after" come from the same script and tool.  The tree
# is copied to OUT (default /tmp/tierd-mutation-REV) and mutmut runs there at nice 19 with
# 2 workers: it never touches the worktree.  mutmut runs, for each mutant, only the unit tests
# that executed the mutated function (its coverage "stats" pass), which restricts every
# module's mutants to its relevant tests.  Prints the score, then the surviving mutants;
# `cd OUT && mutmut show NAME` prints a mutant's diff.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:-}
out=${2:-/tmp/tierd-mutation-${rev:-worktree}}
mutmut="$here/.venv/bin/mutmut"
[ -x "$mutmut" ] || { echo "mutation: $mutmut missing: .venv/bin/pip install -e '.[mutation]'" >&2; exit 1; }

modules=(
	tierd/engine/placement.py tierd/engine/executor.py tierd/engine/state.py
	tierd/engine/hotness.py tierd/linux/tracking.py tierd/linux/procfs.py
	tierd/linux/syscalls.py tierd/policy.py
)

rm -rf "$out"
mkdir -p "$out"
if [ -n "$rev" ]; then
	git -C "$here" archive "$rev" | tar -x -C "$out"
else
	# The working tree as it is, committed or not (tracked and new files, not ignored ones).
	git -C "$here" ls-files -co --exclude-standard -z |
		(cd "$here" && xargs -0 cp -d --parents -t "$out")
fi
# Config in setup.cfg of the copy: pyproject.toml stays the project's, and a [tool.mutmut]
# table there would win over this file.
{
	echo "[mutmut]"
	echo "source_paths = tierd"
	echo "only_mutate ="
	for m in "${modules[@]}"; do echo "    $m"; done
	echo "pytest_add_cli_args_test_selection = tests/unit"
	echo "pytest_add_cli_args = -p no:cacheprovider -q"
	# what the unit tests read besides tests/ (etc/tierd.yaml is the documented policy)
	echo "also_copy ="
	for f in etc docs README.md; do echo "    $f"; done
} > "$out/setup.cfg"
python3 - "$out/pyproject.toml" <<'EOF'
import re, sys
p = sys.argv[1]
s = open(p).read()
# A [tool.mutmut] table (if a later version adds one) would override setup.cfg.
s = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", s)
open(p, "w").write(s)
EOF

cd "$out"
echo "mutation: ${rev:-working tree at} $(git -C "$here" rev-parse --short "${rev:-HEAD}") in $out; load: $(uptime)"
start=$(date +%s)
# scripts/mutmut_run.py: mutmut, with links copied as links and MUTATION_SAMPLE=K (default 1:
# all) running the mutants whose name hashes to 0 mod K (the same ones in every run), or
# MUTATION_ONLY=FILE the mutants named in FILE (e.g. an earlier run's survivors).
nice -n 19 "$here/.venv/bin/python" "$here/scripts/mutmut_run.py" run --max-children 2 \
	> "$out/run.log" 2>&1 || true
echo "mutation: mutmut run took $(( $(date +%s) - start )) s"
"$mutmut" results --all true > "$out/results.txt" 2>&1 || "$mutmut" results > "$out/results.txt" 2>&1 || true
python3 - "$out/results.txt" <<'EOF'
import collections, re, sys
status = {}
for line in open(sys.argv[1]):
    m = re.match(r"\s*(tierd\.\S+__mutmut_\d+): (.+)$", line)
    if m:
        status[m.group(1)] = m.group(2).strip()
counts = collections.Counter(status.values())
counts.pop("not checked", None)  # outside the sample
killed = sum(counts[s] for s in ("killed", "timeout", "segfault"))
total = sum(counts.values())
print("mutation: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
if total:
    print(f"mutation: score {killed}/{total} = {100 * killed / total:.1f}% "
          f"(killed or timed out, of the mutants run; 'no tests' = no unit test runs the code)")
per = collections.Counter()
for name, s in status.items():
    if s in ("survived", "no tests", "suspicious"):
        per[name.split(".x")[0]] += 1
for mod, n in sorted(per.items()):
    print(f"mutation: {mod}: {n} not killed")
for name, s in sorted(status.items()):
    if s in ("survived", "no tests", "suspicious"):
        print(f"{s}: {name}")
EOF
