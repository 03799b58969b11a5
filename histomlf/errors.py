"""The exceptions that mean "the user can fix this": bad input, a missing file, a setting this
machine cannot honour. The CLI shows one of these as one line and a non-zero exit code;
anything else is a bug and keeps its traceback.

Each package's own error subclasses `UserError` (and, where callers already catch it, the
builtin it used to be: `ConfigError` is still a `ValueError`). Nothing is imported here, so
every layer may raise them.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what was asked or where: the message says what to do, in one line."""


class ConfigError(UserError, ValueError):
    """An experiment file, override or option is invalid; the message says which key and why."""
