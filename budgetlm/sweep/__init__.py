"""A grid of training runs under one budget, and the report that says which differences are real."""
