"""Errors a user can act on: the CLI prints them as one line, the service maps them to 4xx."""


class UserError(ValueError):
    """Bad input or a refused request, with a message a person can act on. Never carries a key."""
