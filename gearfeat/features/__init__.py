"""Bottleneck features: the backbone registry, the upscaling/preprocessing layers, the extractor and its HDF5
cache keyed by content. Imports ``gearfeat.data`` and ``gearfeat._internal``."""
