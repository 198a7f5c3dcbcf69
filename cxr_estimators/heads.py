"""Moved to :mod:`cxr_estimators.backbones.heads`; this name keeps old imports working."""

from .backbones.heads import *  # noqa: F401,F403
from .backbones.heads import __all__  # noqa: F401
from .backbones.heads import (  # noqa: F401
    MAX_HEAD_PARAMETERS, check_head_size, check_map, probe_map_shape,
)
