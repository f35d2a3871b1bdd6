"""Throughput benchmarks of the train step, per model and depth scheme (`tuning bench`)."""
