"""The chaos suite: faults injected into a running stack during a surge, then the invariants.

`python -m chaos [scenario ...]` (or `make chaos`); see chaos/scenarios.py for the faults and
chaos/invariants.py for what each run must still hold.
"""
