"""Adapters that plug ampkit into other training frameworks.

Each framework gets its own submodule (``ampkit.integrations.lightning``), imported only on demand,
so ``import ampkit`` never needs a framework installed.
"""
