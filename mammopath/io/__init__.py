"""File readers: DICOM mammograms, tiled slides, microscopy photos and annotations."""
