"""The hook backend's setup verdict, computed once per model structure instead of per call.

Before the hook backend measures anything it checks the model (``backends._hooks``): two
small forwards must give the same logits and write to none of the model's tensors, and each
layer rule's per-example gradients for two examples must match plain autograd (a rule that
disagrees moves its parameter to the ``torch.func`` fallback). The daemon evaluates the same
model object at every checkpoint, with new weights copied in place, so the verdict would be
the same every time: it depends on how the module tree routes the computation, not on the
weights' values.

``SetupCache`` keeps the verdict per model (weakly: a collected model drops its entry) under
a ``Structure`` that must match exactly for the verdict to be reused: every submodule (same
object, same class, same forward hooks, same plain attributes such as a flag its forward
branches on, the same instance-level ``forward`` override if any), every
parameter and buffer (same object for parameters, so a re-tied or replaced weight counts as
a change; name, shape, dtype), the selected names, the probe's example shape and dtype, the
targets' dtype, shape and range (the output check tests that the logits fit them), the
device, the precision, the loss, the attention mask's shape and where the output keeps its
logits. Objects are compared by weak reference, never by ``id`` (an id can be reused by a new
object after the old one is collected).

What the cache may not skip: the comparison of the layer rules with autograd depends on the
weights, not only on the structure. A weight can have one use the hooks see and another they
cannot (a functional call behind a gate that is zero at initialisation); while the gate is
zero the hidden use contributes nothing, the rule matches, and a cached verdict would hide
it once training opens the gate. ``backends._hooks`` therefore repeats that comparison at
every call (two examples: one small forward, two backward passes) and only the structural
checks are skipped on a hit. A parameter whose autograd gradient is exactly zero for both
checked examples makes the verdict inconclusive; it is not cached.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from monitor.stiffness.outputs import Objective
from monitor.stiffness.parameters import ParameterSelection


@dataclass(frozen=True)
class Verdict:
    """What the setup check decided: parameters moved to the fallback, one example's bytes
    in a chunk (``HookGradients.example_bytes``), and the modules (by name: the verdict must
    not keep the model alive) whose output is copied for an in-place op after them."""

    moved: tuple[str, ...]
    example_bytes: int
    copied: tuple[str, ...] = ()


def _hook_keys(module: nn.Module) -> tuple[tuple[int, ...], ...]:
    """The ids of the module's own forward hooks (handles are numbered, never reused)."""
    return tuple(tuple(hooks) for hooks in (module._forward_hooks, module._forward_pre_hooks))


_PLAIN = (bool, int, float, str, type(None))


def _settings(module: nn.Module) -> tuple[tuple[str, Any], ...]:
    """The module's plain attributes (stride, padding, eps, a flag its forward branches on):
    a forward that changes with them may change which calls the hooks see."""
    found = []
    for key, value in sorted(vars(module).items()):
        plain = isinstance(value, _PLAIN) or (
            isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)
        )
        if plain and not key.startswith("_") and key != "training":  # the engine sets eval
            found.append((key, value))
    return tuple(found)


class Structure:
    """A comparable snapshot of everything the verdict depends on (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        selection: ParameterSelection,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        device: torch.device,
        precision: str,
        objective: Objective | None = None,
    ) -> None:
        modules = list(model.named_modules(remove_duplicate=False))
        mask = None if objective is None else objective.attention_mask
        params = list(model.named_parameters(remove_duplicate=False))
        self.plain: tuple[Any, ...] = (
            tuple((name, type(m), _hook_keys(m), _settings(m)) for name, m in modules),
            tuple((name, tuple(p.shape), p.dtype) for name, p in params),
            tuple((n, tuple(b.shape), b.dtype) for n, b in model.named_buffers()),
            tuple(_hook_keys_global()),
            selection.names,
            tuple(inputs.shape[1:]),
            inputs.dtype,
            min(int(inputs.shape[0]), 2),
            (targets.dtype, tuple(targets.shape), *_extent(targets)),
            str(device),
            precision,
            "cross_entropy" if objective is None else objective.loss,
            None if mask is None else (mask.dtype, tuple(mask.shape)),
            None if objective is None else objective.output,  # the output check read it there
        )
        overrides = [vars(m)["forward"] for _, m in modules if "forward" in vars(m)]
        self.objects = [weakref.ref(o) for o in [*(m for _, m in modules), *overrides]] + [
            weakref.ref(p) for _, p in params
        ]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Structure) or self.plain != other.plain:
            return False
        if len(self.objects) != len(other.objects):
            return False
        return all(
            a() is not None and a() is b() for a, b in zip(self.objects, other.objects, strict=True)
        )


def _extent(targets: torch.Tensor) -> tuple[int, int]:
    """The targets' range: the output check verifies the logits have room for them."""
    if targets.numel() == 0:
        return (0, 0)
    return (int(targets.min()), int(targets.max()))


def _hook_keys_global() -> list[tuple[int, ...]]:
    """Global module hooks (``register_module_forward_hook``) change every forward too."""
    from torch.nn.modules import module as base

    return [tuple(base._global_forward_hooks), tuple(base._global_forward_pre_hooks)]


class SetupCache:
    """Verdicts per model object; ``checks`` and ``hits`` count full checks and reuses."""

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[nn.Module, tuple[Structure, Verdict]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self.checks = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model: nn.Module, structure: Structure) -> Verdict | None:
        """The verdict stored for ``model`` if its structure is unchanged, else None."""
        with self._lock:
            entry = self._entries.get(model)
            if entry is None or entry[0] != structure:
                return None
            self.hits += 1
            return entry[1]

    def put(self, model: nn.Module, structure: Structure, verdict: Verdict | None) -> None:
        """Count a full check; store its verdict when conclusive (None: drop any entry)."""
        with self._lock:
            self.checks += 1
            if verdict is None:
                self._entries.pop(model, None)
            else:
                self._entries[model] = (structure, verdict)


SETUP_CACHE = SetupCache()
