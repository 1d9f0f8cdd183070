"""``check``: everything that can be validated before the daemon starts.

A sidecar that dies on its first checkpoint, hours into a run, because of a typo in its
config is worse than useless; ``check`` finds such problems at deploy time: the config and
rules, the model against the probe, the newest checkpoint of each run loaded into the model
(``newest_checkpoints``), and the metrics port, bound and released. It keeps going after the
first problem so the operator sees all of them at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from monitor.config.factory import (
    add_import_path,
    build_model,
    output_spec,
    standard_library_factory,
)
from monitor.config.quoting import cut, short
from monitor.config.schema import MonitorConfig, load_config
from monitor.daemon.memory_check import class_memory_warning
from monitor.daemon.newest_checkpoints import check_newest_checkpoints
from monitor.errors import ConfigError, EngineError, ModelFactoryError, ProbeError
from monitor.exporter.binding import try_bind
from monitor.probe.sampling import load_probe
from monitor.rules.spec import (
    METRICS_WITH_ERRORS,
    PER_PARAMETER_METRICS,
    STATISTICS_METRICS,
    load_rules,
    min_sigma_metrics,
    rule_metrics,
)
from monitor.stiffness.inputs import ProbeSet
from monitor.stiffness.outputs import Objective, OutputSpec
from monitor.store.lock import running_daemon


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _check_output(
    model: torch.nn.Module, probe: ProbeSet, spec: OutputSpec, loss: str = "cross_entropy"
) -> str | None:
    """Run two probe examples through the model: the output must hold (B, classes) logits, or
    (B, T, V) logits the probe's token labels fit for a sequence ``loss``, where
    ``model.output``/``model.output_fn`` say (the engine's own reading of it)."""
    model.eval()
    objective = Objective(loss, probe.attention_mask, spec)
    if objective.sequence and probe.token_targets is None:
        return (
            f"stiffness.loss: {loss} needs per-token labels, but the probe has no "
            "'token_targets' (N, T)"
        )
    try:
        with torch.no_grad():
            mask = objective.mask(0, 2, probe.inputs.device)
            output = objective.call(model, probe.inputs[:2], mask)
    except Exception as exc:  # the operator's model on the operator's probe
        failure = f"{type(exc).__name__}: {cut(str(exc))}"
        return f"model.factory: the model fails on probe inputs: {failure}"
    named = f" (stiffness.loss: {loss})" if objective.sequence else ""
    try:
        logits = objective.logits(output)
    except EngineError as exc:
        return f"model.output: {exc}{named}"
    if objective.sequence:  # token logits at the labels' positions, labels in the vocabulary
        assert probe.token_targets is not None
        try:
            objective.check(output, min(2, probe.size), probe.token_targets)
        except EngineError as exc:
            return f"probe: {exc}{named}"
        return None
    largest = max(probe.classes)
    if largest >= logits.shape[1]:
        return f"probe: target class {largest} but the model has {logits.shape[1]} outputs"
    return None


def _check_port(config: MonitorConfig, report: CheckReport) -> None:
    """Bind the metrics port and release it: a taken port is a problem now, not at start-up."""
    metrics = config.metrics
    if not metrics.enabled or metrics.port == 0:
        return
    try:
        try_bind(metrics.host, metrics.port)
    except ConfigError as exc:
        holder = running_daemon(config.store.path)
        if holder is None:
            report.problems.extend(f"{config.source}: {line}" for line in exc.problems)
            return
        who = f"PID {holder}" if holder else "a daemon"
        report.warnings.append(
            f"{config.source}: metrics.port: {metrics.host}:{metrics.port} is in use by this "
            f"config's running daemon ({who}, holding {config.store.path}); fine while it runs"
        )


def _check_paths(config: MonitorConfig, report: CheckReport) -> None:
    for index, run in enumerate(config.runs):
        if not run.path.is_dir():
            report.warnings.append(
                f"{config.source}: runs[{index}].path: {run.path} does not exist yet "
                "(the daemon waits for it)"
            )
    store_dir = config.store.path.parent
    existing = next((p for p in (store_dir, *store_dir.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):
        report.problems.append(f"{config.source}: store.path: {existing} is not writable")


def _check_tensorboard(config: MonitorConfig, report: CheckReport) -> None:
    """Warnings, not problems: the daemon runs without its TensorBoard events."""
    for run in config.runs if config.tensorboard.enabled else []:
        folder = config.tensorboard_dir(run)
        existing = next(p for p in (folder, *folder.parents) if p.is_symlink() or p.exists())
        if existing == folder and (folder.is_symlink() or not folder.is_dir()):
            why = "a symlink (never followed)" if folder.is_symlink() else "not a folder"
        elif existing != folder and not os.access(existing, os.W_OK):
            why = f"to be created in {existing}, which is not writable"
        else:
            continue
        report.warnings.append(f"{config.source}: tensorboard.dir: {folder} (run {run.name}) is "
                               f"{why}: its events will not be written")  # fmt: skip


def _check_factory_origins(config: MonitorConfig, report: CheckReport) -> None:
    """Warn when a factory is Python's own code rather than the operator's.

    The config names code that the daemon imports and calls (``os:system`` runs a command);
    that is by design, so this is a warning, not a problem: it catches a config that was
    tampered with or copied from the wrong place, before the daemon runs it again.
    """
    for key, spec in (("model.factory", config.model.factory),
                      ("probe.factory", config.probe.factory)):  # fmt: skip
        module = standard_library_factory(spec) if spec else None
        if module is not None:
            report.warnings.append(
                f"{config.source}: {key}: {short(spec)} is from {module!r} in Python's standard "
                "library, not a factory in a module beside the config or an installed package; "
                "the config names code the monitor runs, so protect it like code"
            )


def run_checks(config_path: str | Path) -> CheckReport:
    report = CheckReport()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        report.problems.extend(exc.problems)
        return report
    source = config.source
    report.notes.append(f"config      {source}")
    optional: set[str] = set()  # statistics the rules can do without (``skip_unmeasured``)
    try:
        text = source.read_text(encoding="utf-8")
        rules = load_rules(config.rules, source, text)
        report.notes.append(f"rules       {len(rules.rules)} rule(s) from {rules.source}")
        sigma_metrics = min_sigma_metrics(rules)
        if sigma_metrics and config.stiffness.mode == "class" and not config.stiffness.uncertainty:
            report.warnings.append(
                f"{source}: stiffness.uncertainty: a rule uses min_sigma, which has no effect "
                "unless class mode computes standard errors (set stiffness.uncertainty: true)"
            )
        required = rule_metrics(rules, required_only=True) & STATISTICS_METRICS
        optional = (rule_metrics(rules) & STATISTICS_METRICS) - required
        if required and not config.stiffness.statistics:
            report.warnings.append(
                f"{source}: stiffness.statistics: a rule reads {', '.join(sorted(required))}, "
                "which is not measured unless stiffness.statistics is true (and the probe has "
                "a training split)"
            )
        if optional and not config.stiffness.statistics:
            report.notes.append(
                f"rules       {', '.join(sorted(optional))} not measured (stiffness.statistics "
                "is off): the rules that read it fall back to their other sub-rules"
            )
        unprojectable = rule_metrics(rules) & PER_PARAMETER_METRICS
        if unprojectable and config.stiffness.projection is not None:
            report.warnings.append(
                f"{source}: stiffness.projection: a rule reads "
                f"{', '.join(sorted(unprojectable))}, a per-parameter statistic that is not "
                "measured from projected gradients (only gradient_disparity and "
                "opposing_share are)"
            )
        for metric in sorted(sigma_metrics - METRICS_WITH_ERRORS):
            report.warnings.append(
                f"{rules.source}: min_sigma on {metric} has no effect: standard errors exist "
                f"only for {', '.join(sorted(METRICS_WITH_ERRORS))}"
            )
    except ConfigError as exc:
        report.problems.extend(exc.problems)
    add_import_path(config.base_dir)
    _check_factory_origins(config, report)
    spec = OutputSpec()
    try:
        spec = output_spec(config.model.output, config.model.output_fn)
    except ModelFactoryError as exc:
        report.problems.append(f"{source}: {exc}")
    model = None
    if config.model.factory is None:
        report.notes.append("model       none configured: only TorchScript/export checkpoints")
    else:
        try:
            model = build_model(config.model.factory, config.model.kwargs)
            count = sum(p.numel() for p in model.parameters())
            report.notes.append(f"model       {config.model.factory}: {count:,} parameters")
        except ModelFactoryError as exc:
            report.problems.append(f"{source}: model.factory: {exc}")
    probe = None
    try:
        probe = load_probe(config.probe)
        report.notes.append(
            f"probe       {probe.size} examples in {len(probe.classes)} classes from {probe.source}"
        )
    except ProbeError as exc:
        report.problems.append(f"{source}: probe: {exc}")
    if probe is not None and config.stiffness.statistics and not probe.has_splits:
        report.warnings.append(
            f"{source}: stiffness.statistics: the probe has no training split (a 'split' with "
            "'train' and 'val' examples), so there are no gradient statistics to measure"
        )
    elif probe is not None and optional and config.stiffness.statistics:
        report.notes.append(
            f"rules       {', '.join(sorted(optional))} measured (stiffness.statistics on, "
            "the probe has a training split): the rules that read it use it"
        )
    if model is not None and probe is not None:
        problem = _check_output(model, probe, spec, config.stiffness.loss)
        if problem:
            report.problems.append(f"{source}: {problem}")
        if memory := class_memory_warning(config, model, probe):
            report.warnings.append(memory)
    if model is not None or config.model.factory is None:  # a broken factory: said above
        check_newest_checkpoints(
            config, model,
            lambda module: (
                None if probe is None else _check_output(module, probe, spec, config.stiffness.loss)
            ),
            report.problems, report.warnings, report.notes,
        )  # fmt: skip
    try:
        from monitor.evaluation.evaluator import resolve_device

        report.notes.append(f"device      {resolve_device(config.stiffness.device)}")
    except EngineError as exc:
        report.problems.append(f"{source}: {exc}")
    _check_paths(config, report)
    _check_port(config, report)
    _check_tensorboard(config, report)
    return report
