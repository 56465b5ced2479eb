"""Benchmarks: mammopath against the raw library doing the same work, reported as ratios."""
