"""Synthetic multi-hospital benchmark written in the real formats (`mammopath synth`)."""
