"""LightningDataModules: the cross-modal LODO datamodule and thin per-benchmark ones."""
