"""The processor's domain errors; their base class picks the gRPC status code.

Permanent (retrying cannot help) are FailedPrecondition or InvalidArgument; transient are
Unavailable; a full processor is ResourceExhausted. Each message names the source and why.
"""

from __future__ import annotations

from imgpipe.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)


class UnsupportedUrl(InvalidArgument):
    """The source URL is not an absolute http(s) URL without user info, on an allowed port."""


class BlockedAddress(FailedPrecondition):
    """The source is on a loopback, private, link-local, metadata or otherwise non-public
    host or address."""


class SourceNotFound(FailedPrecondition):
    """The source answered 404 or 410."""


class SourceRejected(FailedPrecondition):
    """The source answered with a status that retrying will not change."""


class TooManyRedirects(FailedPrecondition):
    """The source redirected more times than allowed."""


class SourceTooLarge(FailedPrecondition):
    """The source is larger than the byte limit."""


class NotAnImage(FailedPrecondition):
    """The source is not a JPEG, PNG, WebP, GIF, BMP or TIFF image, or it is corrupt."""


class TooManyPixels(FailedPrecondition):
    """The image has more pixels than the limit."""


class TooManyFrames(FailedPrecondition):
    """The animation has more frames than the limit."""


class TooManyScans(FailedPrecondition):
    """The JPEG has more scans than the limit."""


class UnsafeCodec(FailedPrecondition):
    """The BMP or TIFF is compressed with a codec the processor does not decode."""


class OverMemoryBudget(FailedPrecondition):
    """Decoding the image would take more memory than the codec's budget."""


class OverCpuBudget(FailedPrecondition):
    """Decoding the image took more CPU time than the codec's budget."""


class DecoderCrashed(FailedPrecondition):
    """The codec worker died on the image, in a fresh worker too."""


class SourceUnavailable(Unavailable):
    """The source could not be fetched right now (timeout, connection error, 5xx, 408)."""


class SourceThrottled(Unavailable):
    """The source host asked to be called less (429 or 503); its Retry-After is the wait."""


class StorageUnavailable(Unavailable):
    """The object store failed to take the output."""


class ProcessorFull(ResourceExhausted):
    """This processor is at its limit of images in flight; try another or try later."""
