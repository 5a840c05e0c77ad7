"""Benchmarks that print figures; run by make targets, never timed in tests."""
