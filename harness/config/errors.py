"""The project's own error types: the CLI turns these (and only these) into exit status 2.

A bug anywhere else (a ``KeyError``, an ``AttributeError``) still ends in a traceback and exit
status 1, so it is seen and fixed rather than reported as bad input.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Something the user can act on, said in one line (CLI exit status 2)."""

    def __str__(self) -> str:
        # keys and values from the YAML or the store may hold line breaks or control characters
        msg = super().__str__()
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)


class ConfigError(HarnessError, ValueError):
    """Bad user input: a one-line message naming the key and the rule."""


class NotFoundError(HarnessError, LookupError):
    """A named sweep, experiment or record that the store or the cache does not hold."""
