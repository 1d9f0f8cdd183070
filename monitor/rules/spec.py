"""The schema of early-stopping rules: what a rule file may say, checked before anything runs.

A rule's ``kind`` comes from the closed table below; YAML never names code to import, so a
rule file can be shared and reviewed like data. The vocabulary follows Lightning's
``EarlyStopping`` (``monitor``-like ``metric``, ``mode``, ``patience``, ``min_delta``,
``stopping_threshold``, ``divergence_threshold``) so users meet words they know. This module
only validates; the rule engine that evaluates rules over a run's history builds on it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.config.messages import describe_validation_error
from monitor.config.quoting import short
from monitor.config.reader import read_yaml
from monitor.errors import ConfigError

RULESETS_PACKAGE = "monitor.rulesets"

#: Metrics a rule may track: result fields of one evaluation (see the README's result table).
METRICS = frozenset(
    {
        "within_class",
        "between_class",
        "within_class_pooled",
        "between_class_pooled",
        "sign_within_class",
        "sign_within_class_pooled",
        "sign_between_class",
        "train_val_within_class",
        "train_val_between_class",
        "train_val_sign_within_class",
        "train_val_sign_between_class",
        "train_train_within_class",
        "train_train_between_class",
        "probe_loss",
        "probe_accuracy",
        "train_probe_loss",
        "train_probe_accuracy",
        "train_val_loss_gap",
        "critical_length",
        "gradient_disparity",
        "gsnr",
        "gsnr_median",
        "opposing_share",
    }
)
#: The training split's probe loss minus the held-out probe loss (issue 15's pilot: it holds
#: while the model fits the clean examples, and shrinks once it memorises noisy labels).
LOSS_GAP = "train_val_loss_gap"
#: Metrics of the training split's gradient statistics (``stiffness.statistics``).
STATISTICS_METRICS = frozenset({"gradient_disparity", "gsnr", "gsnr_median", "opposing_share"})
#: Statistics of single parameters: not measured from projected gradients (projection mode).
PER_PARAMETER_METRICS = frozenset({"gsnr", "gsnr_median"})
#: A single class's diagonal entry: ``class_within:<label>``.
CLASS_METRIC = re.compile(r"^class_within:(\d+)$")


def check_metric(value: str) -> str:
    if value not in METRICS and not CLASS_METRIC.match(value):
        known = ", ".join(sorted(METRICS))
        raise ValueError(f"expected one of {known} or class_within:<label>, got {short(value)}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Smoothing(_Strict):
    """``ema`` (exponential moving average with ``alpha``) or ``median`` over ``window``."""

    kind: Literal["none", "ema", "median"] = "none"
    alpha: float = Field(0.3, gt=0, le=1)
    window: int = Field(3, ge=1)


class _TrackedRule(_Strict):
    name: str | None = None
    metric: str = "within_class"
    mode: Literal["min", "max"] = "max"
    smoothing: Smoothing = Field(default_factory=Smoothing)
    min_step: int = Field(0, ge=0)
    min_evaluations: int = Field(0, ge=0)

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_metric(value)


class DeclineRule(_TrackedRule):
    """The smoothed metric stays worse than its best by more than ``min_delta``."""

    kind: Literal["decline"]
    min_delta: float = Field(0.0, ge=0)
    relative: bool = False
    patience: int = Field(3, ge=1)
    min_sigma: float = Field(0.0, ge=0)


class SlopeRule(_TrackedRule):
    """The least-squares slope (per 1000 steps) of the last ``window`` smoothed values shows
    too little improvement for ``patience`` evaluations.

    ``threshold`` is the slowest improvement per 1000 steps that still counts as fine: with
    mode max an evaluation is bad when slope < threshold, with mode min when -slope <
    threshold. So 0 flags any worsening, a negative value tolerates slow worsening, and a
    positive value also flags a plateau.
    """

    kind: Literal["slope"]
    window: int = Field(5, ge=2)
    threshold: float = 0.0
    patience: int = Field(2, ge=1)
    min_sigma: float = Field(0.0, ge=0)


class ThresholdRule(_TrackedRule):
    """Lightning's ``stopping_threshold`` (goal reached) and ``divergence_threshold``."""

    kind: Literal["threshold"]
    stopping_threshold: float | None = None
    divergence_threshold: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> ThresholdRule:
        if self.stopping_threshold is None and self.divergence_threshold is None:
            raise ValueError("expected stopping_threshold or divergence_threshold to be set")
        return self


class NonFiniteRule(_Strict):
    """NaN or inf in any of ``metrics`` (a diverged run)."""

    kind: Literal["non_finite"]
    name: str | None = None
    metrics: list[str] = Field(default_factory=lambda: ["within_class", "probe_loss"])
    min_step: int = Field(0, ge=0)

    @field_validator("metrics")
    @classmethod
    def _known(cls, values: list[str]) -> list[str]:
        return [check_metric(value) for value in values]


class AllRule(_Strict):
    """Stop when every sub-rule says stop at the same evaluation.

    ``skip_unmeasured``: a sub-rule whose metric this evaluation did not measure (gradient
    statistics with ``stiffness.statistics`` off, a train metric without a training split)
    is left out, and the rest decide; with none measured, nothing stops. So one rule set can
    use a signal where it exists and fall back to its other sub-rules where it does not.
    """

    kind: Literal["all"]
    name: str | None = None
    rules: list[Rule] = Field(min_length=1)
    skip_unmeasured: bool = False


class AnyRule(_Strict):
    """Stop when any sub-rule says stop."""

    kind: Literal["any"]
    name: str | None = None
    rules: list[Rule] = Field(min_length=1)


Rule = Annotated[
    DeclineRule | SlopeRule | ThresholdRule | NonFiniteRule | AllRule | AnyRule,
    Field(discriminator="kind"),
]
RULE_KINDS = ("decline", "slope", "threshold", "non_finite", "all", "any")


def rule_name(rule: Any, index: int) -> str:
    """A rule's name: its own, else ``<kind>-<index>`` (its position among its siblings)."""
    return str(rule.name or f"{rule.kind}-{index}")


class BestSpec(_Strict):
    """Which checkpoint of an attempt is its best: the one with the best ``metric``."""

    metric: str = "probe_loss"
    mode: Literal["min", "max"] = "min"

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_metric(value)


class RuleSet(_Strict):
    """A rule file: the top-level rules are alternatives (any one of them stops the run).

    ``best`` names the metric that picks an attempt's best checkpoint; without it, the metric
    and mode of the first rule that tracks one.
    """

    description: str = ""
    rules: list[Rule] = Field(min_length=1)
    best: BestSpec | None = None
    source: str = Field("inline", exclude=True)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[Any]) -> list[Any]:
        names = [rule_name(rule, index) for index, rule in enumerate(rules)]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"expected unique rule names, got duplicates {short(duplicates)}")
        return rules


AllRule.model_rebuild()
AnyRule.model_rebuild()
RuleSet.model_rebuild()


def parse_rules(data: Any, source: Path | str, text: str | None = None) -> RuleSet:
    """Validate a rule file's content (a mapping with ``rules``) or an inline list."""
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict):
        found = "an empty file" if data is None else type(data).__name__
        raise ConfigError(f"{source}: expected a mapping with a 'rules' list, got {found}")
    try:
        return RuleSet.model_validate({**data, "source": str(source)})
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, Path(str(source)), text, RULE_KINDS, RuleSet)
        ) from None


def shipped_rules_path(name: str = "default") -> Path:
    """The path of a rule set shipped with the package (``rules/<name>.yaml`` in the repo)."""
    from importlib.resources import files

    return Path(str(files(RULESETS_PACKAGE).joinpath(f"{name}.yaml")))


def load_rules(
    spec: Path | list[dict[str, Any]] | None, config_source: Path, config_text: str | None = None
) -> RuleSet:
    """The config's ``rules`` value: a file, an inline list, or None for the shipped default.

    Inline rules sit under the config's top-level ``rules`` key, exactly where a rule file
    keeps them, so their errors carry the config file's name and line numbers.
    """
    if isinstance(spec, list):
        return parse_rules(spec, config_source, config_text)
    path = shipped_rules_path() if spec is None else spec
    data, text = read_yaml(
        path,
        not_found=f"{config_source}: rules: file not found: {path}",
        unreadable=f"{config_source}: rules: cannot read {path} ({{error}})",
        what="rules file",
    )
    return parse_rules(data, path, text)


#: Metrics for which an evaluation can carry a standard error (``min_sigma`` works on these).
METRICS_WITH_ERRORS = frozenset(
    {"within_class", "within_class_pooled", "sign_within_class", "sign_within_class_pooled"}
)


def min_sigma_metrics(rules: RuleSet) -> set[str]:
    """The metrics of every rule (at any depth) that asks for drops beyond ``min_sigma``."""

    def walk(rule: Any) -> set[str]:
        if isinstance(rule, (AllRule, AnyRule)):
            return set().union(*(walk(sub) for sub in rule.rules))
        return {rule.metric} if float(getattr(rule, "min_sigma", 0.0)) > 0 else set()

    return set().union(*(walk(rule) for rule in rules.rules))


def rule_metrics(rules: RuleSet, required_only: bool = False) -> set[str]:
    """The metric of every rule, at any depth. ``required_only``: leave out the gradient
    statistics read inside an ``all`` with ``skip_unmeasured`` that has another signal to
    fall back on (without one, the ``all`` can never stop without them)."""

    def walk(rule: Any, required: bool) -> set[str]:
        if isinstance(rule, AllRule) and rule.skip_unmeasured and required:
            found = set().union(*(walk(sub, required) for sub in rule.rules))
            return found if found <= STATISTICS_METRICS else found - STATISTICS_METRICS
        if isinstance(rule, (AllRule, AnyRule)):
            return set().union(*(walk(sub, required) for sub in rule.rules))
        metric = getattr(rule, "metric", None)
        return {metric} if isinstance(metric, str) else set()

    return set().union(*(walk(rule, required_only) for rule in rules.rules))
