"""Typed errors of the upscaling core.

Every error carries a message meant for the person who can fix it: it names the
file or parameter and says what is wrong. The API maps these to problem+json.
"""

from __future__ import annotations


class SatscaleError(Exception):
    """Base class for every error the core raises on purpose."""


class ImageError(SatscaleError):
    """The input image cannot be used."""

    #: short machine-readable kind, used by the HTTP layer to pick a status code
    kind = "invalid-image"


class UnsupportedImageError(ImageError):
    """Not an image, or an image format we do not accept."""

    kind = "unsupported-image"


class ImageTooLargeError(ImageError):
    """The image exceeds a configured limit (bytes, pixels or side length)."""

    kind = "image-too-large"


class CorruptImageError(ImageError):
    """The file claims to be an image but cannot be decoded (truncated, damaged)."""

    kind = "corrupt-image"


class OutputError(SatscaleError):
    """The requested output cannot be written (format limits, unknown extension)."""


class ModelError(SatscaleError):
    """A model name or model file cannot be used."""


class UnknownModelError(ModelError):
    """No model with this name is registered."""


class WeightsError(ModelError):
    """A weights file is missing, corrupt, or not a supported architecture."""


class NcnnFormatError(WeightsError):
    """An ncnn .param/.bin pair cannot be read or mapped to a known architecture."""


class ParameterError(SatscaleError):
    """An option (scale, tile size, precision...) is out of range."""


class Cancelled(SatscaleError):
    """The caller asked the run to stop (its job failed, expired or ran out of time); the run
    ends between two tiles or sampler steps and leaves no output behind."""


def error_summary(exc: BaseException, limit: int = 300) -> str:
    """A library's exception as one line of at most `limit` characters, for a message of ours."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
