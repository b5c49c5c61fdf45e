"""Throughput and memory benchmarks of wfe_valkey against other Valkey clients."""
