"""``mutmut`` with two changes, for scripts/mutation.sh (issue 10).

- mutmut copies tests/ with shutil.copytree following symlinks, which fails on the unit
  fixtures' dangling /proc/PID/exe link: links are copied as links.
- MUTATION_SAMPLE=K (default 1: all) runs only the mutants whose name hashes to 0 mod K, the
  same ones in every run of the same code, for a score in about 1/K of the time; the others
  stay "not checked" and are left out of the score.
- MUTATION_ONLY=FILE runs only the mutants named in FILE (one a line), e.g. the survivors of
  an earlier run, to see quickly which of them new tests kill.
"""

import hashlib
import os
import shutil
import sys

_copytree = shutil.copytree
shutil.copytree = lambda src, dst, symlinks=True, *a, **k: _copytree(src, dst, True, *a, **k)

import mutmut.__main__ as mm  # noqa: E402  (after the patch: mutmut imports shutil's names)

_K = int(os.environ.get("MUTATION_SAMPLE", "1"))
_ONLY = os.environ.get("MUTATION_ONLY")
_collect = mm.collect_source_file_mutation_data


def _sampled(*, mutant_names):
    mutants, by_path = _collect(mutant_names=mutant_names)
    if _K > 1:
        mutants = [m for m in mutants if int(hashlib.sha1(m[1].encode()).hexdigest(), 16) % _K == 0]
    if _ONLY:
        with open(_ONLY) as f:
            names = {line.strip() for line in f if line.strip()}
        mutants = [m for m in mutants if m[1] in names]
    return mutants, by_path


mm.collect_source_file_mutation_data = _sampled
sys.argv[0] = "mutmut"
mm.cli()
