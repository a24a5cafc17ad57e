"""Argument helpers shared by the ops (no torch import here)."""
import importlib
import numbers
import sys
import types


def pair(value, name, minimum=1):
    """An int or a pair of ints → (int, int), each >= ``minimum`` (torchvision's ``_pair`` plus validation)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        out = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if out[0] < minimum or out[1] < minimum:
        raise ValueError(f"{name} must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {value!r}")
    return out


def real(value, name):
    """A Python float (the kernels check that it is finite)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def integer(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def is_torch_tensor(x):
    """True for a torch.Tensor, without importing torch when it is not loaded."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


class _NoTensor:
    """Stands for ``torch.Tensor`` while torch is not loaded: nothing is an instance of it."""


class TorchSide(types.ModuleType):
    """A torch-facing module of ``dynrefer.ops`` (``dynrefer.ops._torch_roi_align``, ...), imported on first use.

    Torch-free code reaches the PyTorch side through it: ``side.roi_align`` imports the module (and torch) the
    first time and is then a plain attribute. TorchScript, which resolves such names when it compiles a function
    (torch is loaded by then), follows them to the typed functions. ``side.Tensor`` is ``torch.Tensor`` once torch
    is loaded and, before that, a class with no instances, so ``isinstance(x, side.Tensor)`` never imports torch;
    TorchScript sees ``torch.Tensor`` and, for an argument typed ``Tensor``, takes the check as statically true
    (the other branch is not compiled).
    """

    def __init__(self, name):
        super().__init__(name)
        self.__dict__["_side_name"] = name

    def __getattr__(self, attr):
        if attr.startswith("__"):  # protocol probes (copy, pickle, inspect) load nothing
            raise AttributeError(attr)
        if attr == "Tensor":
            torch = sys.modules.get("torch")
            if torch is None:
                return _NoTensor
            value = torch.Tensor
        else:
            value = getattr(self.module(), attr)
        self.__dict__[attr] = value
        return value

    def module(self):
        """The real module, imported if need be (its globals are what ``torch.fx.wrap`` patches while tracing)."""
        return importlib.import_module(self.__dict__["_side_name"])
