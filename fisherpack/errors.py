"""The exceptions fisherpack raises for problems a user can fix.

Every error a user can cause (a bad file, a bad flag, a missing folder, a config that cannot work)
is a :class:`FisherpackError` whose message is one line saying what is wrong and what to do. The
command line prints that line and exits non-zero; anything else escaping is a bug in fisherpack.
"""

from __future__ import annotations

__all__ = ["FisherpackError", "FormatError", "DataError", "ConfigError", "DistributedError", "RanksDisagreeError"]


class FisherpackError(Exception):
    """Base class: a problem with the user's input, reported as one line."""


class FormatError(FisherpackError):
    """A .fpk file is not a valid fisherpack file: truncated, corrupt, hostile or another format."""


class DataError(FisherpackError):
    """Training or test data is missing, malformed or inconsistent."""


class ConfigError(FisherpackError, ValueError):
    """A configuration value, flag or model choice is invalid or impossible."""


class DistributedError(FisherpackError):
    """A run under torch.distributed cannot go on: a rank died, timed out or failed its share of the work."""


class RanksDisagreeError(DistributedError):
    """The ranks of a distributed run computed different masks, codes or Fisher state."""
