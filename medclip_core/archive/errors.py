"""Errors of the archive connection, all in the project's hierarchy (:mod:`medclip_core.errors`).

Messages name the archive by its address without credentials, say what went wrong and what to do,
and never quote a request's headers or the exception text of the HTTP library.
"""
from medclip_core.errors import AccessDeniedError, MedclipError, TaskInputError


class ArchiveError(MedclipError, RuntimeError):
    """Something the archive did or did not do (refusal, odd answer, missing object)."""


class ArchiveUnavailableError(ArchiveError):
    """The archive could not be reached, or did not answer within the request timeout."""


class ArchiveAuthError(ArchiveError, AccessDeniedError):
    """The archive refused the credentials the host configured (HTTP 401 / 403)."""


class ArchiveNotFoundError(ArchiveError):
    """A study, series or instance is not in the archive (or has no images)."""


class ArchiveWriteError(ArchiveError):
    """A STOW-RS store failed or could not be confirmed: nothing is reported as stored."""


class ArchiveLimitError(ArchiveError, TaskInputError):
    """A request is larger than the host's limits (e.g. a series of thousands of images)."""


class ArchiveNotConfiguredError(MedclipError):
    """No archive is configured (MEDCLIP_DICOMWEB_URL unset), or writing back is not allowed."""
