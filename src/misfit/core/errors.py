"""The errors a stage reports in one line (misfit.core.stage), in a module that imports
nothing: importing them from where they are raised would load torch or MLflow into stages
that never use them."""


class DataError(RuntimeError):
    """The data is missing, damaged or not what the study expects; names the file."""


class TrackingStoreError(RuntimeError):
    """The tracking store cannot be used; the message names the URI or file and what was expected."""
