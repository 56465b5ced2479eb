"""mammopath: domain-generalized cross-modal learning for mammography and histopathology."""

__version__ = "0.1.0"
