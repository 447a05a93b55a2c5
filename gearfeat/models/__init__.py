"""What trains on features and what gets saved: the dense head, the scikit-learn baseline, CNN architectures,
the stitched Keras model. Imports ``features``, ``data``, ``outputs`` and ``_internal``."""
