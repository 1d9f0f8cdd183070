"""Self-describing programs: TorchScript archives and ``torch.export`` programs.

These formats carry their module, so the monitor needs no ``model.factory`` to measure them.
TorchScript's own unpickler builds only TorchScript types and is safe as it is; a
``torch.export`` archive is vetted member by member first (``_vet_archive``), because its
loader unpickles freely. An exported program is a fixed graph whose training-mode ops ignore
``.eval()``, so ``freeze_in_eval_mode`` rewrites them into their eval forms. Both formats keep
the step in the extra files they were saved with.
"""

from __future__ import annotations

import io
import types
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch._export.verifier import SpecViolationError  # a graph its own checks reject

from monitor.checkpoints.payload import (
    CORRUPT_ERRORS,
    ZIP_ERRORS,
    Payload,
    fail,
    os_failure,
    short,
    step_and_epoch,
)
from monitor.checkpoints.pickle_scan import scan_torch_save
from monitor.checkpoints.pickles import pickle_globals, pickle_refusal, torch_load
from monitor.config.schema import CheckpointConfig


def _extra_step(extra: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Step and epoch from the extra files an archive was saved with (empty when absent)."""
    return step_and_epoch({key: value for key, value in extra.items() if value})


def read_torchscript(path: Path, config: CheckpointConfig, detected: str) -> Payload:
    """``torch.jit.load``: TorchScript's own unpickler builds only TorchScript types, so no
    Python code from the file runs here; its pickles are vetted for cost first
    (``pickle_scan``). ``_extra_files`` named step/epoch hold the step."""
    try:
        with path.open("rb") as handle:  # its C++ unpickler crashes on deeply nested values
            problem = scan_torch_save(handle, members=(".pkl", ".debug_pkl"))
    except OSError as exc:
        raise os_failure(path, exc) from exc
    if problem is not None:
        raise fail(path, f"not loaded: {problem}", "corrupt")
    extra: dict[str, Any] = {"global_step": "", "step": "", "epoch": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the operator chose this format
            module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location="cpu", _extra_files=extra
            )
    except CORRUPT_ERRORS as exc:  # RuntimeError mostly; UnicodeDecodeError for a bad name
        raise fail(path, f"not a loadable TorchScript archive ({short(exc)})", "corrupt") from exc
    step, epoch = _extra_step(extra)
    return Payload(format="torchscript", module=module, step=step, epoch=epoch)


def _vet_archive(path: Path, allow_pickle: bool) -> None:
    """Refuse a ``torch.export`` archive whose members would be unpickled with code.

    ``torch.export.load`` unpickles nested ``torch.save`` members with ``weights_only=False``
    and custom-object constants with plain ``pickle``. Each nested ``torch.save`` member is
    therefore loaded once with ``weights_only=True`` here, and any raw pickle that imports a
    global is refused, so that only tensors and plain values get through.
    """
    if allow_pickle:
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    head = member.read(4)  # raw weights are most of the archive: skip them
                if not head.startswith((b"PK\x03\x04", b"\x80")):
                    continue
                data = archive.read(info)
                where = f"member {info.filename}: "
                if data.startswith(b"PK"):
                    torch_load(io.BytesIO(data), path, allow_pickle, where=where)
                elif names := pickle_globals(data):
                    raise pickle_refusal(path, names[0], where)
    except ZIP_ERRORS as exc:
        raise fail(path, f"truncated or corrupt archive ({short(exc)})", "corrupt") from exc
    except OSError as exc:
        raise os_failure(path, exc) from exc


def _flag_only_train(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    """``nn.Module.train``: sets the flags, the graph stays as frozen at load."""
    return torch.nn.Module.train(self, mode)


def _counts_batches(node: torch.fx.Node) -> bool:
    """True for a training-mode BatchNorm's unused ``num_batches_tracked.add_(1)``."""
    if node.op != "call_function" or node.target is not torch.ops.aten.add_.Tensor or node.users:
        return False
    target = node.args[0] if node.args else None
    return (
        isinstance(target, torch.fx.Node)
        and target.op == "get_attr"
        and str(target.target).endswith("num_batches_tracked")
    )


def freeze_in_eval_mode(module: torch.fx.GraphModule) -> int:
    """Turn an exported graph's training-mode ops into their eval forms; returns how many.

    An exported program is a fixed graph: ``batch_norm(training=True)`` and
    ``dropout(train=True)`` stay so whatever ``.eval()`` says, and ``ExportedProgram.module()``
    makes ``.eval()`` raise. Stiffness must be measured in eval mode (DESIGN §2), so every op
    argument named ``training``/``train`` is set False, BatchNorm's ``num_batches_tracked
    += 1`` (which eval mode skips, and which would make the forward write to the model) is
    dropped, and ``train()``/``eval()`` are given back their flag-only behaviour so that the
    engine can call them.
    """
    changed = 0
    for node in list(module.graph.nodes):
        if _counts_batches(node):
            module.graph.erase_node(node)
            changed += 1
            continue
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        for index, argument in enumerate(schema.arguments):
            if argument.name not in ("training", "train"):
                continue
            if index < len(node.args) and node.args[index] is True:
                node.args = (*node.args[:index], False, *node.args[index + 1 :])
                changed += 1
            elif node.kwargs.get(argument.name) is True:
                node.kwargs = {**node.kwargs, argument.name: False}
                changed += 1
    if changed:
        module.recompile()
    module.train = types.MethodType(_flag_only_train, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(torch.nn.Module.eval, module)  # type: ignore[method-assign]
    module.eval()
    return changed


def read_export(path: Path, config: CheckpointConfig, detected: str) -> Payload:
    """A ``torch.export`` archive (``.pt2``), as an eval-mode module; see ``freeze_in_eval_mode``.

    The program runs only on inputs of the shapes it was exported for: export with a dynamic
    batch dimension (``dynamic_shapes``) so the engine may choose its chunk size.
    """
    _vet_archive(path, config.allow_pickle)
    extra: dict[str, Any] = {"global_step": "", "step": "", "epoch": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # version-skew notices, not errors
            program = torch.export.load(path, extra_files=extra)
        module = program.module()
    except (*CORRUPT_ERRORS, AssertionError, SpecViolationError) as exc:
        raise fail(path, f"not a loadable torch.export archive ({short(exc)})", "corrupt") from exc
    freeze_in_eval_mode(module)
    step, epoch = _extra_step(extra)
    return Payload(format="export", module=module, step=step, epoch=epoch)
