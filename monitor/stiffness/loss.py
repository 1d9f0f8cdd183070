"""Per-example cross-entropy whose gradient keeps its digits for examples the model fits.

The gradient of cross-entropy at the logits is softmax − one-hot. For an example the model
already fits, the softmax probability of its class is 1 − r with r tiny, and torch's
backward forms ``exp(log_softmax) − 1``: once r falls below fp32's epsilon (~6e-8) that is
exactly 0, and above it only a digit or two of r survive. The other components (the small
probabilities themselves) stay accurate, so the gradient's *direction*, which is all
stiffness reads, is wrong in the one component that should balance them: on a briefly
trained MLP the fp32 per-pair cosine was 6.3e-2 off float64 (docs/precision.md).

Here the target's component is formed as −r/(1 + r), with r the sum of the other classes'
``exp(z_j − z_max)``: no difference of nearly equal numbers is ever taken, so every
component keeps fp32's relative precision. The loss itself is ``(z_max − z_y) +
log1p(r)``, exact in the same way (torch's ``logsumexp − z_y`` rounds small losses to 0).
It is an ``autograd.Function`` with a vmap rule, so the hooks, ``torch.func`` and the loop
backend all differentiate the same, accurate expression.
"""

from __future__ import annotations

from typing import Any

import torch


def _parts(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Shifted exponentials e (…, C) with e[top] = 1, their sum r over the non-top classes,
    the top class, and the one-hot of the targets."""
    top = logits.argmax(dim=-1, keepdim=True)  # (…, 1)
    shifted = logits - logits.gather(-1, top)  # (…, C), ≤ 0, exactly 0 at the top
    e = shifted.exp()
    is_top = torch.zeros_like(e).scatter(-1, top, 1.0)
    rest = (e * (1 - is_top)).sum(dim=-1, keepdim=True)  # (…, 1), r
    hot = torch.zeros_like(e).scatter(-1, targets.unsqueeze(-1), 1.0)
    return shifted, e, is_top, rest, hot


class _StableCrossEntropy(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        shifted, _, _, rest, _ = _parts(logits, targets)
        # z_max − z_y  +  log(1 + r): both terms non-negative, neither a cancellation.
        at_target = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return -at_target + torch.log1p(rest.squeeze(-1))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        logits, targets = inputs
        ctx.save_for_backward(logits, targets)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets = ctx.saved_tensors
        _, e, is_top, rest, hot = _parts(logits, targets)
        p = e / (1 + rest)  # (…, C) softmax, every entry to full relative precision
        g = p - hot
        # Where the target is the top class, p_y − 1 = −r / (1 + r): put that in exactly.
        fitted = (hot * is_top).sum(dim=-1, keepdim=True)  # (…, 1), 1 where y = argmax
        g = g * (1 - hot * fitted) + hot * fitted * (-rest / (1 + rest))
        return g * grad_output.unsqueeze(-1), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (…,) of ``logits`` (…, C) at class indices ``targets`` (…,),
    equal to ``F.cross_entropy(reduction="none")`` but accurate for fitted examples."""
    result: torch.Tensor = _StableCrossEntropy.apply(logits, targets)  # type: ignore[no-untyped-call]
    return result


IGNORE_INDEX = -100  # Hugging Face's label for "no loss here" (padding, prompt tokens)


def sequence_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, shift: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean token cross-entropy (b,) and token accuracy (b,) of ``logits``
    (b, T, V) at ``labels`` (b, T), Hugging Face's ``labels`` convention: positions equal to
    ``IGNORE_INDEX`` carry no loss. With ``shift`` (``causal_lm``) the logits at position t
    predict the label at t + 1, the shift ``transformers``' causal-LM loss makes inside.

    Each example's loss is the mean over its own labelled positions, so a sequence's weight
    in stiffness does not depend on its length (DESIGN §5). A sequence with no labelled
    position has loss 0 and a zero gradient: the engine leaves it out of every pair, as it
    does any example whose gradient norm is at most ``min_grad_norm``. Every token's
    cross-entropy is the stable one above (``cross_entropy``): the fitted tokens of a trained
    language model are most tokens. Ignored positions are masked with ``where``, never
    gathered out, so the shapes stay fixed under ``torch.func.vmap``.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]  # (b, T-1, V), (b, T-1)
    labelled = labels != IGNORE_INDEX  # (b, T')
    tokens = cross_entropy(logits, torch.where(labelled, labels, 0))  # (b, T')
    weight = labelled.to(tokens.dtype)
    count = weight.sum(dim=1).clamp(min=1.0)  # (b,), 1 for a sequence with no label
    losses = (tokens * weight).sum(dim=1) / count
    hits = ((logits.argmax(dim=-1) == labels) & labelled).to(tokens.dtype).sum(dim=1)
    return losses, hits.detach() / count.detach()


def labelled_examples(labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """(N,) bool: the examples with at least one position that carries a loss."""
    kept = labels[:, 1:] if shift else labels
    return (kept != IGNORE_INDEX).any(dim=1)
