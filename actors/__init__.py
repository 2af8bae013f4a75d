"""Stateful model workers for ``map_batches`` and the local tiny model zoo."""
