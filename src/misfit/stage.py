"""Running a stage: expected errors print one clear message instead of a traceback."""
from __future__ import annotations

import sys
from typing import Callable

from misfit.config import ConfigError
from misfit.errors import DataError
from misfit.tracking import TrackingStoreError


def run_stage(main: Callable, *args) -> int:
    try:
        main(*args)
    except (ConfigError, DataError, TrackingStoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
