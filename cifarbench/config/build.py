"""Objects from config nodes: Hydra's instantiate with cifarbench's own errors left readable."""

from __future__ import annotations

from cifarbench.errors import CifarbenchError


def build(node, *args, **kwargs):
    """hydra.utils.instantiate, but a CifarbenchError raised by the target reaches the user as itself.

    Hydra wraps every exception from a `_target_` in an InstantiationException whose text starts with
    "Error in call to target ...", which buries the one line that tells the user what to fix.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, CifarbenchError):
            raise cause from None
        raise
