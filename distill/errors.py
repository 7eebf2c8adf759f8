"""Errors that mean "the user's input is wrong": the CLI prints them in one line and exits 2."""

from __future__ import annotations

import unicodedata

__all__ = ["UserError", "ConfigError", "DataError"]


def _one_line(problem: str) -> str:
    """Line breaks and other control characters written as escapes (``\\n``, ``\\x08``): one line."""
    if problem.isprintable():
        return problem
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
        for c in problem
    )


class UserError(Exception):
    """Bad input (config, data, files). Each element of ``problems`` is one line for the user.

    A problem that quotes the user's text (a key, a path, a name) may carry a newline or another
    control character; those are escaped, so every problem stays on one line.
    """

    def __init__(self, *problems: str) -> None:
        self.problems: list[str] = [_one_line(p) for p in problems if p] or ["invalid input"]
        super().__init__("\n".join(self.problems))


class ConfigError(UserError):
    """An experiment file or ``--set`` override breaks a rule of the config schema."""


class DataError(UserError):
    """A dataset cannot support the requested experiment (missing file, NaN, too few rows, ...)."""
