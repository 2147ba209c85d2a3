"""Moved to ``tierd.sim.simulate`` (the simulator is a user of the engine, not part of it).

This name stays for code written against the old location; new code imports tierd.sim."""

from tierd.sim.simulate import *  # noqa: F401,F403
from tierd.sim.simulate import _from_mapping, _mulmod  # noqa: F401
