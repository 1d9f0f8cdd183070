"""The hook backend: per-layer rules for covered parameters, ``torch.func`` for the rest.

Per chunk, one forward and one backward to the layer outputs (``layers.capture``) give each
covered layer's A and B; its rule (``layers/``) turns them into factored per-example
gradients, and the chunk reaches the modes as ``FactoredRows``: norms, Gram blocks and
class sums are then formed layer by layer, the ghost way where that is cheaper, without the
(b, P) matrix (DESIGN §3). Parameters no rule covers (a custom module's own
``nn.Parameter``, attention's in-projection, anything used outside its module's forward) are
computed by the ``torch.func``/loop provider for those parameters only, and their rows join
the others as ``Dense`` blocks. The result is the same stiffness, exactly.

Coverage is *checked*, not assumed: at setup the rules' per-example gradients for a few
examples are compared with plain autograd, one backward per example. A parameter whose
rule disagrees (its module is called through a functional path the hooks never see, a tied
weight also used outside a module, a subclass doing something else) moves to the fallback.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from monitor.errors import EngineError
from monitor.stiffness.gradients import GradientChunk, GradientProvider
from monitor.stiffness.layers import FactoredRows, ParamBlock, Rule, rule_for
from monitor.stiffness.layers.capture import Call, capture
from monitor.stiffness.layers.uses import Dense, Use
from monitor.stiffness.parameters import ParameterSelection
from monitor.stiffness.provider_base import ProviderBase

CHECK_EXAMPLES = 2
CHECK_TOLERANCE = 1e-3  # relative; fp32 rules agree with autograd to ~1e-6


def restricted(selection: ParameterSelection, names: list[str]) -> ParameterSelection:
    """The selection of ``names`` only; every other selected weight becomes a constant."""
    keep = set(names)
    params = {n: selection.params[n] for n in selection.names if n in keep}
    constants = dict(selection.constants)
    constants.update({n: t for n, t in selection.params.items() if n not in keep})
    return ParameterSelection(
        names=tuple(params), params=params, constants=constants,
        numel=sum(int(t.numel()) for t in params.values()),
    )  # fmt: skip


class HookGradients(ProviderBase):
    """Per-example gradients as ``FactoredRows``; see the module docstring."""

    def _prepare(self) -> None:
        live = dict(self.model.named_parameters())
        owner = {id(live[name]): name for name in self.selection.names}
        self.layers: dict[nn.Module, tuple[Rule, dict[str, str]]] = {}
        for module in self.model.modules():
            rule = rule_for(module)
            if rule is None:
                continue
            local = {
                key: owner[id(p)]
                for key, p in module._parameters.items()
                if p is not None and id(p) in owner
            }
            if local:
                self.layers[module] = (rule, local)
        self.covered = {name for _, local in self.layers.values() for name in local.values()}
        self.fallback_names = [n for n in self.selection.names if n not in self.covered]
        self.fallback: GradientProvider | None = None
        self.example_bytes = 0
        self.conclusive = True
        self.copied: frozenset[nn.Module] = frozenset()  # layers followed by in-place ops

    @property
    def fallback_selection(self) -> ParameterSelection:
        return restricted(self.selection, self.fallback_names)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _uses(self, calls: list[Call]) -> dict[str, list[Use]]:
        """Every call's rule output, gathered per selected parameter name (tied: all uses)."""
        dtype = self.selection.dtype
        found: dict[str, list[Use]] = {name: [] for name in self.covered}
        for call in calls:
            rule, local = self.layers[call.module]
            assert call.grad is not None
            for key, use in rule.compute(call.module, call.inputs, call.grad, dtype).items():
                if key in local and local[key] in found:
                    found[local[key]].append(use)
        return found

    def check(self) -> list[str]:
        """Compare the rules with autograd on the first examples; move disagreeing
        parameters to the fallback. Returns the names moved.

        A layer whose rule disagrees is tried once more with its output copied (an in-place
        operation after it, ``nn.ReLU(inplace=True)``, changes what the hooks see); layers
        the copy puts right keep their rule and the copy. ``copied`` may come in preset from
        a cached verdict, so the retry is needed only when something changed. Sets
        ``conclusive``: False when some covered parameter's autograd gradient was exactly
        zero for every checked example (its rule could be wrong unseen)."""
        wrong, silent, k, calls = self._disagreeing()
        if wrong:
            known = self.copied
            self.copied = known | frozenset(
                m for m, (_, local) in self.layers.items() if set(local.values()) & set(wrong)
            )
            retried, silent_again, k, calls_again = self._disagreeing()
            if len(retried) < len(wrong):
                wrong, silent, calls = retried, silent_again, calls_again
                still = set(wrong)
                self.copied = frozenset(
                    m
                    for m in self.copied
                    if m in self.layers and not set(self.layers[m][1].values()) <= still
                )
            else:
                self.copied = known
        self.conclusive = not (silent - set(wrong))
        self.apply(wrong)
        self._measure(calls, k)
        return wrong

    def _disagreeing(self) -> tuple[list[str], set[str], int, list[Call]]:
        """Covered parameters whose rule disagrees with autograd, those whose gradient was
        zero for every checked example, the examples checked, and the recorded calls."""
        k = min(CHECK_EXAMPLES, int(self.targets.shape[0]))
        x, y, mask = self._batch(0, k)
        got = capture(
            self.model, list(self.layers), x, y, self.selection.dtype,
            contextlib.nullcontext(), keep_graph=True, copied=self.copied,
            objective=self.objective, mask=mask,
        )  # fmt: skip
        live: dict[str, torch.Tensor] = dict(self.model.named_parameters())
        for call in got.calls:  # the tensors the forward used (FSDP2: gathered, not shards)
            _, local = self.layers[call.module]
            live.update({local[key]: p for key, p in call.params.items() if key in local})
        names = sorted(self.covered)
        try:
            uses = self._uses(got.calls)
            blocks = {n: ParamBlock(n, int(live[n].numel()), uses[n], k) for n in names}
        except torch.cuda.OutOfMemoryError:
            raise  # not a verdict on the rules: the engine reports it
        except (IndexError, ValueError, RuntimeError, TypeError):  # a rule refused its call
            blocks = {}
        wrong = [n for n in names if n not in blocks]
        checked = [n for n in names if n in blocks]
        silent = set(checked)  # parameters whose autograd gradient was zero so far
        for i in range(k):
            want = torch.autograd.grad(
                got.losses[i], [live[n] for n in checked], retain_graph=True, allow_unused=True
            )
            for name, expected in zip(checked, want, strict=True):
                exact = torch.zeros_like(live[name]) if expected is None else expected
                if expected is None or bool(expected.ne(0).any()):
                    silent.discard(name)  # unused in the graph is structural, not silent
                mine = (
                    blocks[name].materialised()[i]
                    if blocks[name].uses
                    else torch.zeros_like(exact).reshape(-1)
                )
                error = float((mine - exact.reshape(-1).to(mine.dtype)).norm())
                scale = float(exact.norm()) + float(mine.norm())
                if not error <= CHECK_TOLERANCE * scale + 1e-12 and name not in wrong:
                    wrong.append(name)
        return wrong, silent, k, got.calls

    def apply(self, wrong: list[str] | tuple[str, ...]) -> None:
        """Move ``wrong`` (a setup check's verdict, fresh or cached) to the fallback."""
        self.covered -= set(wrong)
        self.fallback_names = [n for n in self.selection.names if n not in self.covered]
        self.layers = {
            m: (rule, {key: n for key, n in local.items() if n in self.covered})
            for m, (rule, local) in self.layers.items()
            if any(n in self.covered for n in local.values())
        }

    def _measure(self, calls: list[Call], k: int) -> None:
        """Bytes one example costs a chunk: captured A and B, plus the largest weight's
        per-example gradient (what a rule may materialise), plus the fallback's rows."""
        held = 0
        for call in calls:
            tensors = [a for a in call.inputs if isinstance(a, torch.Tensor)]
            if call.grad is not None:
                tensors.append(call.grad)
            held += sum(t.numel() * t.element_size() for t in tensors)
        item = torch.finfo(self.selection.dtype).bits // 8
        largest = max((int(self.selection.params[n].numel()) for n in self.covered), default=0)
        fallback = sum(int(self.selection.params[n].numel()) for n in self.fallback_names)
        self.example_bytes = held // max(k, 1) + (largest + fallback) * item

    def __call__(self, start: int, stop: int) -> GradientChunk:
        x, y, mask = self._batch(start, stop)
        rows = stop - start
        try:
            got = capture(
                self.model, list(self.layers), x, y, self.selection.dtype, self._autocast(),
                copied=self.copied, objective=self.objective, mask=mask,
            )  # fmt: skip
            uses = self._uses(got.calls)
        except torch.cuda.OutOfMemoryError:
            raise  # the chunk stream retries with a smaller chunk
        except RuntimeError as error:
            raise EngineError(f"the layer-hook forward/backward failed: {error}") from error
        if self.fallback is not None:
            dense = self.fallback(start, stop).grads  # (b, P_fallback), fallback order
            assert isinstance(dense, torch.Tensor)
            offset = 0
            for name in self.fallback_selection.names:
                size = int(self.selection.params[name].numel())
                uses[name] = [Dense(dense[:, offset : offset + size])]
                offset += size
        blocks = [
            ParamBlock(n, int(self.selection.params[n].numel()), uses[n], rows)
            for n in self.selection.names
        ]
        return GradientChunk(
            start=start,
            stop=stop,
            grads=FactoredRows(blocks, rows, self.device, self.selection.dtype),
            losses=got.losses.to(torch.float64).cpu(),
            correct=got.correct.cpu(),
        )
