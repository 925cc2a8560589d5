"""Sampling from a trained model, with optional shallow fusion heads."""
