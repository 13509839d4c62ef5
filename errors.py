"""Errors named by what the operator must do (exit codes: 0 ok, 1 runtime failure, 2 usage/config)."""

from __future__ import annotations


class BarsignalError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(BarsignalError):
    """Bad configuration or usage: fix the input; restarting will not help."""

    exit_code = 2


class ArtifactError(BarsignalError):
    """A model artifact is missing, corrupted or built for other features: refuse it at start."""

    exit_code = 2


class DataError(BarsignalError):
    """Bad market data in a file (conflicting duplicates, unparseable rows...)."""

    exit_code = 1


class TransientError(BarsignalError):
    """Network or peer trouble: retry with backoff."""

    exit_code = 1


class BadMessage(BarsignalError):
    """One bad frame or bar: count it, log it, drop it, go on."""

    exit_code = 1
