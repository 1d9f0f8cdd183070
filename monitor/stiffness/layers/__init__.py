"""Per-layer rules for per-example gradients without materialising (b, P) (DESIGN §3).

One file per layer type, each registered in ``registry.RULES`` by ``@register`` (layers of
``transformers`` by qualified name, ``registry.NAMED``); importing
this package imports them all. ``rows.FactoredRows`` is what the hook backend gives the
modes instead of a (b, P) tensor.
"""

from monitor.stiffness.layers import (  # noqa: F401 (imported to register the rules)
    batchnorm,
    conv,
    embedding,
    groupnorm,
    huggingface,
    layernorm,
    linear,
    rmsnorm,
)
from monitor.stiffness.layers.registry import RULES, Rule, register, rule_for
from monitor.stiffness.layers.rows import FactoredRows, ParamBlock

__all__ = ["RULES", "FactoredRows", "ParamBlock", "Rule", "register", "rule_for"]
