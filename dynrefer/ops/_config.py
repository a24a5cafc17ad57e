"""Process-wide op settings (no torch import)."""

_settings = {"cuda_index_checks": True}


def set_cuda_index_checks(enabled: bool) -> None:
    """Turn the raising of CUDA RoI-Align's batch-index errors at the next call on (default) or off.

    On the CPU the kernel validates batch indices before it runs and raises at once. On CUDA the kernels check
    them on the device, without a host synchronisation: a RoI whose batch index is outside ``[0, N)`` pools to
    zeros (never an out-of-bounds read) and the first one is recorded for its device. With the checks on, the
    next RoI-Align call on that device raises it as a ``ValueError`` (reading the record costs no synchronisation);
    with them off, only ``dynrefer.ops.check_errors()`` reports it.
    """
    _settings["cuda_index_checks"] = bool(enabled)


def cuda_index_checks() -> bool:
    return _settings["cuda_index_checks"]
