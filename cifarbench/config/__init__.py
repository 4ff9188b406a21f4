"""Config: where the YAML lives (paths), the resolvers it uses (resolvers), building objects from `_target_` nodes
(build) and the checks that turn a bad value into one clear message (validation)."""

from cifarbench.config import resolvers  # noqa: F401 - registers the resolvers before any config is composed
from cifarbench.config.build import build
from cifarbench.config.paths import config_dir
from cifarbench.config.validation import check_known_keys, check_required, validate

__all__ = ["build", "check_known_keys", "check_required", "config_dir", "validate"]
