"""Runs model artifacts without torch: artifact integrity, scoring backends, signal rule."""
