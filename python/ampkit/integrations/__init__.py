"""Adapters that make ampkit the mixed-precision engine of other training frameworks.

Each framework gets its own submodule (``ampkit.integrations.lightning``,
``ampkit.integrations.ultralytics``), which imports its framework only when it is imported, so
``import ampkit`` never needs a framework installed.
"""
