"""DataError, in a module that imports nothing: stage.py catches it, and importing it from
data.py would load torch into stages that never use it (the report)."""


class DataError(RuntimeError):
    """The data is missing, damaged or not what the study expects; names the file."""
