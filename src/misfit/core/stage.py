"""Running a stage: expected errors print one clear message instead of a traceback."""
from __future__ import annotations

import sys
from typing import Callable

from misfit.core.config import ConfigError
from misfit.core.errors import DataError, TrackingStoreError


def run_stage(main: Callable, *args) -> int:
    try:
        main(*args)
    except (ConfigError, DataError, TrackingStoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
