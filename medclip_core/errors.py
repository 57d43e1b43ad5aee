"""The error types the core raises for bad input or unavailable resources.

Every message is written for the person using the app: it says what is wrong and what to do.
The UI, the CLI and the Python API show ``str(error)`` as it is, never a traceback.
"""


class MedclipError(Exception):
    """Base class of every error the core raises on purpose."""


class ImageLoadError(MedclipError, ValueError):
    """A file could not be read as a medical image (empty, truncated, not an image, too large ...)."""


class ModelUnavailableError(MedclipError, RuntimeError):
    """A registry model cannot be loaded here (unknown name, no network, missing local copy)."""


class TaskInputError(MedclipError, ValueError):
    """A task got input it cannot work with (no labels, empty text, k out of range ...)."""


class AccessDeniedError(MedclipError, PermissionError):
    """An action needs a permission the caller has not shown (e.g. the admin token of a shared deployment)."""
