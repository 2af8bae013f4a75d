"""Shared machinery: reading, atomic writing, Ray setup, seeds, faults, skips, batching."""
