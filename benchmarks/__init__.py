"""Benchmarks: model cost (parameters, FLOPs, CPU latency) and, later, backend / kernel / stream benchmarks."""
