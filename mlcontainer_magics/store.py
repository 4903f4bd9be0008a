"""The snapshot store, at the import path notebooks use: ``from mlcontainer_magics.store import
Store`` (the tutorials do). It lives in :mod:`mlcontainer_magics.core.store`."""

from .core.store import Store, default_root

__all__ = ["Store", "default_root"]
