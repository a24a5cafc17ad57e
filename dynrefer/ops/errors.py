"""Exceptions raised by dynrefer.ops, and ``check_errors`` for the errors kernels find on a device."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple


class BoxesShapeError(ValueError, AssertionError):
    """Boxes are neither ``[K, 5]`` rois nor a list of ``[L, 4]`` boxes.

    A ``ValueError`` (dynrefer's convention for bad shapes) that is also an ``AssertionError``, the exception
    ``torchvision.ops.roi_align`` raises for the same mistake, so code written against either keeps working.
    """


_MAX_CUDA_DEVICES = 64  # devices the CUDA module keeps error records for (roi_align.cu)


def check_errors(device: Optional[Any] = None) -> None:
    """Raise the error a kernel recorded on the device since the last check, after synchronising it.

    CUDA RoI-Align checks batch indices on the device without a host synchronisation: a RoI whose batch index is
    outside ``[0, N)`` pools to zeros and the first one is recorded. The next RoI-Align call on that
    device raises it; this raises it now: it waits for the device's queued work and raises ``ValueError`` naming
    the RoI, its index and N, then clears the record. ``device``: None (every device dynrefer has used, and the
    CPU emulation of the CUDA kernel), ``"cpu"``, ``"cuda"`` (the current device), ``"cuda:<i>"``, an ``int`` or a
    ``torch.device``. Costs nothing when no CUDA kernel has run.
    """
    import sys

    from dynrefer import _C

    targets: List[Tuple[str, int]]
    if device is None:
        targets = [("cpu", 0)]
        if "dynrefer._C_cuda" in sys.modules:
            targets += [("cuda", i) for i in range(_MAX_CUDA_DEVICES)]
    else:
        targets = [_device_target(device)]
    for kind, index in targets:
        if kind == "cuda" and "dynrefer._C_cuda" not in sys.modules:
            continue  # no CUDA kernel has run in this process
        rec = _C.roi_align_take_error(kind, index, synchronize=True)
        if rec is not None:
            roi, value, n, op = rec
            where = "cpu (tiled emulation)" if kind == "cpu" else f"cuda:{index}"
            raise ValueError(
                f"roi_align: rois[{roi}, 0] = {value:g} is not a batch index in [0, {n}) (found on {where} by the {op} "
                "kernel, which pooled that RoI to zeros)"
            )


def _device_target(device: Any) -> Tuple[str, int]:
    if isinstance(device, bool):
        raise TypeError("check_errors: device must be None, a string, an int or a torch.device, got bool")
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"check_errors: device index must be >= 0, got {device}")
        return ("cuda", device)
    text = str(device) if type(device).__name__ == "device" else device
    if not isinstance(text, str):
        raise TypeError(f"check_errors: device must be None, a string, an int or a torch.device, got {type(device).__name__}")
    if text == "cpu":
        return ("cpu", 0)
    if text == "cuda":
        torch = _loaded_torch()
        return ("cuda", torch.cuda.current_device() if torch is not None and torch.cuda.is_available() else 0)
    if text.startswith("cuda:") and text[5:].isdigit():
        return ("cuda", int(text[5:]))
    raise ValueError(f"check_errors: device must be 'cpu', 'cuda' or 'cuda:<index>', got {text!r}")


def _loaded_torch() -> Any:
    import sys

    return sys.modules.get("torch")
