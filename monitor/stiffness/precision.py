"""TF32 on for ``precision: tf32`` and off for everything else, for one engine call.

Off is explicit, not the default: cuDNN allows TF32 convolutions by default, which moved
fp32 cosines by ~2e-3 (a simulation of TF32 rounding on the engine tests' CNN), 200 times
the fp32 contract; cuDNN RNNs likewise; and a caller in the same process that asked for
``set_float32_matmul_precision("high")`` or ``"medium"`` (bf16 oneDNN matmuls on the CPU)
would do the same to matmuls.

torch keeps these settings twice: a global matmul precision (and the legacy ``allow_tf32``
flags that read it) and, since 2.9, per-backend ``fp32_precision`` fields. Reading the
global one raises once the two disagree, so matmuls are switched through the global setting
(which writes the fields consistently), cuDNN through its own fields (the legacy flag before
torch had them), and everything the caller had, consistent or not, is put back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def _fields() -> list[Any]:
    """The per-backend settings this torch has: CUDA and oneDNN matmuls (written by the
    global setting), cuDNN convolutions and RNNs (not)."""
    backends = torch.backends
    found = []
    for space in (
        backends.cuda.matmul,
        getattr(backends.mkldnn, "matmul", None),
        getattr(backends.cudnn, "conv", None),
        getattr(backends.cudnn, "rnn", None),
    ):
        if space is not None and hasattr(space, "fp32_precision"):
            found.append(space)
    return found


def _callers_matmul_precision() -> str | None:
    """The global matmul precision to put back: as torch reads it, or, where the caller's
    settings disagree and that read raises, as the legacy CUDA flag still reads it."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        pass
    try:
        return "high" if torch.backends.cuda.matmul.allow_tf32 else "highest"
    except RuntimeError:
        return None


@contextlib.contextmanager
def tf32_only_for(precision: str) -> Iterator[None]:
    """TF32 matmuls and cuDNN work for ``tf32`` and for nothing else while inside."""
    tf32 = precision == "tf32"
    caller = _callers_matmul_precision()
    fields = _fields()
    saved = [space.fp32_precision for space in fields]
    cudnn = torch.backends.cudnn
    legacy = not hasattr(getattr(cudnn, "conv", None), "fp32_precision")
    saved_cudnn = cudnn.allow_tf32 if legacy else None
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    if legacy:
        cudnn.allow_tf32 = tf32
    for space in fields:
        if space in (getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None)):
            space.fp32_precision = "tf32" if tf32 else "ieee"
    try:
        yield
    finally:
        if caller is not None:
            torch.set_float32_matmul_precision(caller)
        for space, value in zip(fields, saved, strict=True):
            space.fp32_precision = value
        if saved_cudnn is not None:
            cudnn.allow_tf32 = saved_cudnn
