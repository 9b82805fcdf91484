"""Errors the core raises. Each message is written for the person using the app."""

from __future__ import annotations


class IPAStudioError(Exception):
    """Base class: anything the user can fix or should be told about in plain words."""


class ModelFileError(IPAStudioError):
    """A model file is missing, unreadable, truncated or of the wrong kind."""


class UnsafeFileError(ModelFileError):
    """A pickle file that would run code (or that cannot be read without running code)."""


class AdapterMismatchError(IPAStudioError):
    """An IP-Adapter checkpoint does not fit the loaded base model or image encoder."""


class ImageInputError(IPAStudioError):
    """A reference, init, mask or control image cannot be used."""


class RequestError(IPAStudioError):
    """A generation request is inconsistent (e.g. a mask without an init image)."""


class Cancelled(IPAStudioError):  # noqa: N818 - reads better at call sites than CancelledError
    """The job was cancelled; no image was produced."""
