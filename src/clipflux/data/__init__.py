"""Data: the synthetic world, raw-to-shard preprocessing, shard reading and batch loading."""
