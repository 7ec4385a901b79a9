"""Example handlers used by `headwater dev` and the README."""
