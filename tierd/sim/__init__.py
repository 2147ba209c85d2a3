"""The simulator: tierd's engine on a simulated machine and workload (``tierd simulate``).

A user of the engine, not a part of it: it replaces only the kernel boundary (the Kernel
facade of docs/design.md) with a simulated one, and scores what the engine does against an
oracle, counting what the moves cost.  See ``tierd.sim.simulate``.
"""
