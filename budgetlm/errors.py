"""One exception type for user-facing problems: the CLI prints it on one line and exits non-zero."""


class BudgetLMError(Exception):
    """Bad input or an impossible request; the message names the file, field or flag."""
