"""LightningDataModules: the cross-modal LODO composition and one datamodule per public benchmark.

Re-exported here so that configs can name them by class (``class_path: CBISDDSMDataModule``).
"""

from mammopath.datamodules.bach import BACHDataModule
from mammopath.datamodules.benchmark import BenchmarkDataModule, SlideBenchmarkDataModule
from mammopath.datamodules.camelyon import Camelyon16DataModule, Camelyon17DataModule
from mammopath.datamodules.cbis_ddsm import CBISDDSMDataModule
from mammopath.datamodules.crossmodal import CrossModalDataModule
from mammopath.datamodules.inbreast import INbreastDataModule
from mammopath.datamodules.lodo import DEFAULT_NORMALIZATION, LodoDataModule, Source

__all__ = [
    "DEFAULT_NORMALIZATION",
    "BACHDataModule",
    "BenchmarkDataModule",
    "CBISDDSMDataModule",
    "Camelyon16DataModule",
    "Camelyon17DataModule",
    "CrossModalDataModule",
    "INbreastDataModule",
    "LodoDataModule",
    "SlideBenchmarkDataModule",
    "Source",
]
