"""Durability of shard state: the write-ahead log of accepted changes, periodic snapshots of each
shard's arrays, and recovery (newest snapshot + log replay)."""
