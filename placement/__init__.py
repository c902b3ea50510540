"""Placement: where each live session runs and where each viewer is sent.

The decision core (:mod:`placement.core`) is pure: it takes a fleet snapshot,
a request, a policy and ``now``. Registries, the service and the FastAPI app
are thin I/O layers around it.
"""
