"""Fault-injection suite: real processes, real faults, lost/duplicated counts per scenario."""
