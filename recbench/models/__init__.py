"""Backbones: each receives its embedding layers from a method factory and scores items through
``full_table()`` (dependency injection, so every compression method applies unchanged)."""
