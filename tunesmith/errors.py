"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class TunesmithError(Exception):
    """Base class: the message names the file, row or field at fault and what to do."""

    exit_code = 1


class ConfigError(TunesmithError):
    exit_code = 2


class DataError(TunesmithError):
    pass


class ModelNotFoundError(TunesmithError):
    pass


class TemplateError(TunesmithError):
    pass


class HardwareError(TunesmithError):
    pass
