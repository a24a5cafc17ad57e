"""Exceptions raised by dynrefer.ops."""


class BoxesShapeError(ValueError, AssertionError):
    """Boxes are neither ``[K, 5]`` rois nor a list of ``[L, 4]`` boxes.

    A ``ValueError`` (dynrefer's convention for bad shapes) that is also an ``AssertionError``, the exception
    ``torchvision.ops.roi_align`` raises for the same mistake, so code written against either keeps working.
    """
