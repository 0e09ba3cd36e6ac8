"""Plumbing under every stage: atomic writes, writer locks, logs, devices, numeric ranges, storage, Zarr arrays, wells."""
