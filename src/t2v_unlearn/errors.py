"""Errors in the user's input, not in the code. `train.py` prints them without a traceback."""


class SettingsError(ValueError):
    """Invalid setting on the command line or in a config file: a value the job cannot use."""
