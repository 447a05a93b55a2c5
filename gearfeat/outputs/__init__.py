"""What a run leaves behind: the run folder and its manifest, metrics, figures, the journal-style report.
Imports only ``gearfeat._internal``."""
