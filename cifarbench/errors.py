"""User-facing errors.

Anything a user can fix (a config value, a missing dataset, a wrong checkpoint) raises a CifarbenchError whose
message names the culprit and the fix. The entry points print that message alone, without a traceback, and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys


class CifarbenchError(Exception):
    """A problem the user can fix; str(error) is the whole explanation."""


class ConfigError(CifarbenchError, ValueError):
    """A config value is invalid."""


class DataError(CifarbenchError):
    """A dataset is missing, corrupt or unreadable."""


class CheckpointError(CifarbenchError):
    """A checkpoint is missing, foreign, unsafe or does not fit the model."""


class ResumeRefusedError(ConfigError, CheckpointError):
    """A resume whose config differs from the one in the run's last.pt: refused before anything is written."""


EXIT_USER_ERROR = 2
# EX_TEMPFAIL from sysexits.h: "try again later", which is what a preempted run wants.
EXIT_INTERRUPTED = 75


def exit_on_user_error(entry_point):
    """Decorate a CLI entry point so a CifarbenchError prints one line to stderr and exits with status 2."""

    @functools.wraps(entry_point)
    def wrapper(*args, **kwargs):
        try:
            return entry_point(*args, **kwargs)
        except CifarbenchError as error:
            print(f"cifarbench: error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
