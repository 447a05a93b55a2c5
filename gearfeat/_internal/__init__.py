"""Plumbing every layer may use: errors and argument checks, progress bars, atomic file writes, machine facts,
the quiet TensorFlow import. Imports nothing else of gearfeat."""
