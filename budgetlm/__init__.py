"""budgetlm: train the strongest language model a budget allows."""

__version__ = "0.1.0"
