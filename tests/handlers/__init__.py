"""Handlers the test suite deploys; importable from the repository root by worker subprocesses."""
