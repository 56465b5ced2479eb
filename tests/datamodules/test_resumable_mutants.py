"""Tests that kill the surviving mutants of `make mutation` (docs/mutation.md)."""
