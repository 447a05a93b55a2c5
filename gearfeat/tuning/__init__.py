"""Many heads on one set of cached arrays: the search space, the joblib backends, running and ranking trials,
the leaderboard and its figure. Imports ``models``, ``features``, ``data``, ``outputs``, ``_internal``."""
