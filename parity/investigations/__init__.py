"""Investigations of a failing check: which package (`bisect`), which stage (`localize`),
which input (`search`)."""
