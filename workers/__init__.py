"""Headwater's worker side: pools of processes that drain the invocation queue and run handlers."""
