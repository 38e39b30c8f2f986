"""Adapters that make ampkit the mixed-precision engine of other training frameworks.

Each submodule imports its framework on use; import the one you need, e.g.
``ampkit.integrations.ultralytics``.
"""
