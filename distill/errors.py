"""Errors that mean "the user's input is wrong": the CLI prints them in one line and exits 2."""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError"]


class UserError(Exception):
    """Bad input (config, data, files). Each element of ``problems`` is one line for the user."""

    def __init__(self, *problems: str) -> None:
        self.problems: list[str] = [p for p in problems if p] or ["invalid input"]
        super().__init__("\n".join(self.problems))


class ConfigError(UserError):
    """An experiment file or ``--set`` override breaks a rule of the config schema."""


class DataError(UserError):
    """A dataset cannot support the requested experiment (missing file, NaN, too few rows, ...)."""
