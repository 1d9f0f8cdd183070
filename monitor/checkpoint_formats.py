"""Readers of checkpoint files, and the rules every reader follows.

Each reader takes a path and returns a ``Payload`` (weights or a module, and the step):
``torch.save`` files (plain, wrapped or Lightning), safetensors files, Hugging Face folders,
TorchScript and ``torch.export`` archives; ``monitor.checkpoint_dcp`` reads DCP folders with
the helpers defined here, and ``monitor.checkpoint`` chooses the reader. Two rules hold for
every reader:

- Nothing from a file runs code unless ``checkpoint.allow_pickle`` says the operator trusts it.
  ``torch.load`` always runs with ``weights_only=True``; formats whose own loaders unpickle
  freely (DCP's ``.metadata``, ``torch.export`` archives) are vetted with a restricted
  unpickler first. A refused file names the global it needed, because that is what tells the
  operator whether the file is merely unusual (an ``argparse.Namespace`` of hyperparameters)
  or hostile.
- Every failure is a ``CheckpointError`` whose message starts with the path and whose
  ``reason`` token (``missing``, ``corrupt``, ``pickle``, ``format``) labels the error metric.
  The exceptions caught are the ones each library raises for bad bytes (``CORRUPT_ERRORS``);
  anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import struct
import types
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open

from monitor.config import CheckpointConfig
from monitor.errors import CheckpointError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
STEP_KEYS = ("global_step", "step")
HF_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
_REFUSED = re.compile(  # torch 2.4-2.13 wordings of "this pickle needs that global"
    r"GLOBAL ([\w.]+)|Unsupported class:? ([\w.]+)|unrecognized function ([\w.<>' ]+)"
    r"|but got (<class '[\w.]+'>)"
)
CORRUPT_ERRORS = (  # what loaders raise for bytes that make no sense
    RuntimeError,  # torch's zip reader: "failed finding central directory", bad records
    EOFError,
    pickle.UnpicklingError,
    ValueError,  # includes UnicodeDecodeError from mangled pickled strings
    KeyError,
    IndexError,
    TypeError,
    struct.error,
    zipfile.BadZipFile,
    OverflowError,
)
Leaf = TypeVar("Leaf")


@dataclass(frozen=True, eq=False)
class Payload:
    """What one reader found: weights (``state_dict``) or a whole ``module``, and the step."""

    format: str
    state_dict: dict[str, torch.Tensor] | None = None
    module: torch.nn.Module | None = None
    step: int | None = None
    epoch: int | None = None


def fail(path: Path, message: str, reason: str) -> CheckpointError:
    """A ``CheckpointError`` whose message starts with the path, as every one of ours does."""
    return CheckpointError(f"{path}: {message}", reason=reason)


def short(exc: BaseException) -> str:
    """The first line of a library's message: torch's run to paragraphs of advice."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else type(exc).__name__
    return first if len(first) <= 240 else first[:237] + "..."


def os_failure(path: Path, exc: OSError, where: str = "") -> CheckpointError:
    """A file that vanished or may not be read is ``missing``; any other ``OSError`` from a
    loader (torch's legacy reader seeks past the end of a truncated file: EINVAL) is bytes
    that make no sense, so ``corrupt``."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return fail(path, f"{where}cannot read the checkpoint ({exc})", "missing")
    return fail(path, f"{where}truncated or corrupt ({exc})", "corrupt")


# --- values inside payloads -------------------------------------------------------------


def as_int(value: object) -> int | None:
    """A non-negative whole number from an int, integral float, digit string or 1-element
    integer tensor (trainers store steps in all of these); anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex():
            return None
        if value.dtype == torch.bool:
            return None
        value = int(value.item())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        value = int(text.strip()) if text.strip().isdigit() else None
    return value if isinstance(value, int) and value >= 0 else None


def step_and_epoch(values: Mapping[Any, Any]) -> tuple[int | None, int | None]:
    """``(step, epoch)`` from a payload's own counters.

    ``global_step`` wins over ``step`` (Lightning and most loops count optimizer steps in
    ``global_step``). ``epoch`` is always returned as the epoch, and doubles as the step only
    when neither step key exists, so that epoch-wise checkpoints still sort and plot in order.
    """
    epoch = as_int(values.get("epoch"))
    for key in STEP_KEYS:
        step = as_int(values.get(key))
        if step is not None:
            return step, epoch
    return epoch, epoch


def flatten(tree: Mapping[Any, Any], leaf: type[Leaf], prefix: str = "") -> dict[str, Leaf]:
    """Leaves of a nested mapping under dotted names: ``{"enc": {"w": t}}`` -> ``{"enc.w": t}``.

    Non-leaf values (step counters, strings, lists) are skipped: they are not weights.
    """
    found: dict[str, Leaf] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, leaf):
            found[name] = value
        elif isinstance(value, Mapping):
            found.update(flatten(value, leaf, name + "."))
    return found


def select_weights(
    tree: Mapping[Any, Any], key: str | None, leaf: type[Leaf], path: Path
) -> dict[str, Leaf]:
    """The model's weights inside a checkpoint's top-level dict.

    In order: the configured ``state_dict_key`` (a dotted path into nested dicts works too);
    the first of ``WRAPPER_KEYS`` holding weights; the top-level weights themselves (a raw
    state dict, possibly with a step counter beside it); else every nested weight, flattened,
    so that e.g. ``{"generator": ..., "discriminator": ...}`` can be told apart by prefix
    when the weights are matched to the model.
    """
    if key is not None:
        value: Any = tree.get(key)
        if value is None and "." in key:
            value = tree
            for part in key.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
        found = flatten(value, leaf) if isinstance(value, Mapping) else {}
        if not found:
            keys = ", ".join(sorted(map(str, tree))[:12])
            raise fail(
                path,
                f"checkpoint.state_dict_key {key!r} holds no weights; top-level keys: {keys}",
                "format",
            )
        return found
    for name in WRAPPER_KEYS:
        value = tree.get(name)
        found = flatten(value, leaf) if isinstance(value, Mapping) else {}
        if found:
            return found
    top = {str(name): value for name, value in tree.items() if isinstance(value, leaf)}
    found = top or flatten(tree, leaf)
    if not found:
        keys = ", ".join(sorted(map(str, tree))[:12]) or "none"
        raise fail(
            path,
            "no state dict found: no tensors at the top level or under "
            f"{', '.join(WRAPPER_KEYS)} (top-level keys: {keys}); "
            "set checkpoint.state_dict_key to the key that holds the weights",
            "format",
        )
    return found


def is_lightning(payload: Mapping[Any, Any]) -> bool:
    """Lightning writes its version; a bare ``state_dict`` + ``global_step`` pair is its shape."""
    return LIGHTNING_VERSION_KEY in payload or (
        "state_dict" in payload and "global_step" in payload
    )


# --- torch.save -------------------------------------------------------------------------


def refused_global(message: str) -> str | None:
    """The global a weights-only unpickler refused, from its error text (torch 2.4-2.13)."""
    match = _REFUSED.search(message)
    if match is None:
        return None
    return next(group for group in match.groups() if group).strip()


def pickle_refusal(path: Path, name: str, where: str = "") -> CheckpointError:
    """The one message for "this file needs full unpickling", wherever it was found."""
    return fail(
        path,
        f"{where}needs full unpickling to load (refused global {name}); set "
        "checkpoint.allow_pickle: true only if you trust this file, since unpickling can "
        "run arbitrary code",
        "pickle",
    )


def torch_load(source: Path | IO[bytes], path: Path, allow_pickle: bool, where: str = "") -> Any:
    """``torch.load`` onto the CPU, weights-only unless the operator trusts the file.

    ``source`` is the file, or a member read from an archive (``where`` then names it).
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        name = refused_global(str(exc))
        if name is not None and not allow_pickle:
            raise pickle_refusal(path, name, where) from exc
        raise fail(path, f"{where}truncated or corrupt ({short(exc)})", "corrupt") from exc
    except (ImportError, AttributeError) as exc:
        if allow_pickle:  # the pickle names a module or class this environment lacks
            message = f"{where}unpickling needs code this environment lacks ({short(exc)})"
            raise fail(path, message, "pickle") from exc
        raise fail(path, f"{where}truncated or corrupt ({short(exc)})", "corrupt") from exc
    except CORRUPT_ERRORS as exc:
        raise fail(path, f"{where}truncated or corrupt ({short(exc)})", "corrupt") from exc
    except OSError as exc:
        raise os_failure(path, exc, where) from exc


def read_torch_save(path: Path, config: CheckpointConfig, detected: str) -> Payload:
    """``torch.save`` files: raw state dicts, wrapping dicts, Lightning ``.ckpt`` files.

    With ``format: auto`` the payload decides between ``state_dict`` and ``lightning``
    whatever the suffix; a configured format is reported as configured.
    """
    payload = torch_load(path, path, config.allow_pickle)
    if isinstance(payload, torch.nn.Module):  # torch.save(model), loadable only when trusted
        weights = {k: v for k, v in payload.state_dict().items() if isinstance(v, torch.Tensor)}
        return Payload(format=detected, state_dict=weights)
    if not isinstance(payload, Mapping):
        raise fail(path, f"expected a dict of tensors, got a {type(payload).__name__}", "format")
    payload = {  # {"model": model} pickles, too, when trusted
        key: value.state_dict() if isinstance(value, torch.nn.Module) else value
        for key, value in payload.items()
    }
    if config.format == "auto":
        detected = "lightning" if is_lightning(payload) else "state_dict"
    weights = select_weights(payload, config.state_dict_key, torch.Tensor, path)
    step, epoch = step_and_epoch(payload)
    return Payload(format=detected, state_dict=weights, step=step, epoch=epoch)


# --- safetensors and Hugging Face folders -----------------------------------------------


def read_safetensors_file(file: Path, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the header's string metadata of one ``.safetensors`` file."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        where = "" if file == path else f"{file.name}: "
        raise fail(
            path, f"{where}truncated or corrupt safetensors ({short(exc)})", "corrupt"
        ) from exc
    except OSError as exc:
        raise os_failure(path, exc, "" if file == path else f"{file.name}: ") from exc
    return tensors, dict(metadata)


def read_safetensors(path: Path, config: CheckpointConfig, detected: str) -> Payload:
    """A single ``.safetensors`` file; its header metadata may carry ``step``/``epoch``."""
    tensors, metadata = read_safetensors_file(path, path)
    step, epoch = step_and_epoch(metadata)
    return Payload(format="safetensors", state_dict=tensors, step=step, epoch=epoch)


def _read_json(file: Path, path: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise fail(path, f"{file.name} not found", "missing") from exc
    except (ValueError, OSError) as exc:
        raise fail(path, f"{file.name} is not readable JSON ({short(exc)})", "corrupt") from exc


def _shard_files(index_file: Path, path: Path) -> list[Path]:
    """The shard files an HF ``*.index.json`` names in its ``weight_map``, in first-use order.

    Shard names must be plain file names in the folder: an index must not point elsewhere.
    """
    index = _read_json(index_file, path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise fail(path, f"{index_file.name} has no weight_map", "corrupt")
    shards: list[Path] = []
    for shard in dict.fromkeys(weight_map.values()):
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise fail(path, f"{index_file.name} names an invalid shard {shard!r}", "corrupt")
        shards.append(path / shard)
    return shards


def _trainer_state(path: Path) -> tuple[int | None, int | None]:
    """HF Trainer's ``trainer_state.json`` (``global_step``, ``epoch``) when the folder has one.

    It is auxiliary: an unreadable one leaves the step to the folder name, not an error.
    """
    file = path / "trainer_state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    return step_and_epoch(state) if isinstance(state, dict) else (None, None)


def read_hf(path: Path, config: CheckpointConfig, detected: str) -> Payload:
    """A Hugging Face folder: ``model.safetensors`` or ``pytorch_model.bin``, whole or sharded.

    Preference follows ``transformers``: safetensors before pickles, one file before an index.
    """
    name = next((name for name in HF_FILES if (path / name).is_file()), None)
    if name is None:
        expected = ", ".join(HF_FILES)
        raise fail(path, f"no Hugging Face weights here (expected one of {expected})", "format")
    files = _shard_files(path / name, path) if name.endswith(".index.json") else [path / name]
    weights: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for file in files:
        if not file.is_file():
            raise fail(path, f"shard {file.name} is missing", "missing")
        if file.suffix == ".safetensors":
            tensors, meta = read_safetensors_file(file, path)
            metadata.update(meta)
        else:
            payload = torch_load(file, path, config.allow_pickle, where=f"{file.name}: ")
            if not isinstance(payload, Mapping):
                raise fail(path, f"{file.name}: expected a dict of tensors", "format")
            tensors = select_weights(payload, None, torch.Tensor, path)  # never wrapped
        weights.update(tensors)
    step, epoch = _trainer_state(path)
    if step is None:
        step, epoch = step_and_epoch(metadata)
    return Payload(format="hf", state_dict=weights, step=step, epoch=epoch)


# --- TorchScript and torch.export ---------------------------------------------------------


def _extra_step(extra: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Step and epoch from the extra files an archive was saved with (empty when absent)."""
    return step_and_epoch({key: value for key, value in extra.items() if value})


def read_torchscript(path: Path, config: CheckpointConfig, detected: str) -> Payload:
    """``torch.jit.load``: TorchScript's own unpickler builds only TorchScript types, so no
    Python code from the file runs here. ``_extra_files`` named step/epoch hold the step."""
    extra: dict[str, Any] = {"global_step": "", "step": "", "epoch": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the operator chose this format
            module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location="cpu", _extra_files=extra
            )
    except RuntimeError as exc:
        raise fail(path, f"not a loadable TorchScript archive ({short(exc)})", "corrupt") from exc
    step, epoch = _extra_step(extra)
    return Payload(format="torchscript", module=module, step=step, epoch=epoch)


def pickle_globals(data: bytes) -> list[str] | None:
    """The globals a complete pickle would import, or None when ``data`` is not one.

    Only a stream that parses to its final STOP counts, so raw tensor bytes that happen to
    start like a pickle are not mistaken for one.
    """
    names: list[str] = []
    strings: list[str] = []
    end = 0
    try:
        for opcode, arg, position in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]) if len(strings) >= 2 else "<unknown>")
            end = position if position is not None else end
    except (ValueError, IndexError, struct.error, UnicodeDecodeError):
        return None
    return names if end == len(data) - 1 else None


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
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
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
    except (*CORRUPT_ERRORS, AssertionError) as exc:
        raise fail(path, f"not a loadable torch.export archive ({short(exc)})", "corrupt") from exc
    freeze_in_eval_mode(module)
    step, epoch = _extra_step(extra)
    return Payload(format="export", module=module, step=step, epoch=epoch)
