"""Benchmarks: model cost (parameters, FLOPs, CPU latency), `autr bench model|msda|stream`, the GPU check, and
the README's generated performance section (see benchmarks/README.md)."""
