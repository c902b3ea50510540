"""Traces bundled with ``nearcast simulate --trace NAME`` (YAML files)."""
