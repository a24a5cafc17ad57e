"""Process-wide op settings (no torch import)."""

_settings = {"cuda_index_checks": True}


def set_cuda_index_checks(enabled: bool) -> None:
    """Turn the batch-index check of CUDA RoI-Align on (default) or off.

    On the CPU the kernel validates batch indices itself. For CUDA tensors the check is a small reduction on the
    device plus one host synchronisation per call; turn it off in tight training loops once the data is trusted.
    With the check off an out-of-range batch index pools to zeros (never an out-of-bounds read).
    """
    _settings["cuda_index_checks"] = bool(enabled)


def cuda_index_checks() -> bool:
    return _settings["cuda_index_checks"]
