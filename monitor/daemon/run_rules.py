"""The rules of every run: loaded at start-up, replayed from the store, reloaded on SIGHUP,
and applied to each stored evaluation (``RunDecisions`` does one run).

A store that fails in the middle of a decision leaves the engine ahead of the store, so the
rules are then rebuilt by replaying the store once it commits again: the rule state and any
stop come back exactly; only the verdict rows of that one evaluation are not rewritten.
"""

from __future__ import annotations

import logging

from monitor.config.schema import MonitorConfig, load_config
from monitor.daemon.decisions import RunDecisions
from monitor.daemon.held_writes import HeldWrites
from monitor.errors import ConfigError
from monitor.evaluation.evaluator import Evaluation
from monitor.exporter.metrics import MonitorMetrics
from monitor.rules.engine import RuleEngine
from monitor.rules.spec import RuleSet, load_rules
from monitor.store.database import StoreError
from monitor.store.store import Store

log = logging.getLogger("monitor.daemon")


class RunRules:
    """One ``RunDecisions`` per configured run, under one rule set."""

    def __init__(self, config: MonitorConfig, metrics: MonitorMetrics, held: HeldWrites) -> None:
        self.config = config
        self.metrics = metrics
        self._held = held
        self.rules: RuleSet | None = None
        self.decisions: dict[str, RunDecisions] = {}

    def load(self) -> RuleSet:
        self.rules = load_rules(self.config.rules, self.config.source)
        return self.rules

    def start(self, store: Store) -> None:
        """Rules for every run, their state replayed from the stored history."""
        rules = self.rules if self.rules is not None else self.load()
        self.decisions = {
            run.name: RunDecisions(run, rules, self.config, store, self.metrics)
            for run in self.config.runs
        }
        for name, decisions in self.decisions.items():  # the replayed state, before any news
            self.metrics.set_rule_states(name, decisions.rules, decisions.engine.state())

    def follow_attempts(self) -> None:
        """Each run whose store holds a newer attempt (``reset`` from another process) starts
        afresh; the loop calls it every turn."""
        for name, decisions in self.decisions.items():
            if decisions.follow_attempt():
                self.metrics.set_rule_states(name, decisions.rules, decisions.engine.state())

    def observe(self, store: Store, evaluation_id: int, evaluation: Evaluation) -> None:
        """Hand the stored evaluation to its run's rules (verdicts, stop signal)."""
        decisions = self.decisions.get(evaluation.run or "")
        if decisions is None:
            return
        try:
            decisions.observe(evaluation_id, evaluation)
            self.metrics.set_rule_states(decisions.run.name, decisions.rules,
                                         decisions.engine.state())  # fmt: skip
        except StoreError:  # the rules saw it, the store did not: replay once it commits
            self._held.replace_running(self.refresh)
            raise
        except Exception as error:  # the evaluation is stored; a rules failure must not stop us
            log.debug("rules failed", exc_info=True)
            self.metrics.count_error(evaluation.run or "", "rules")
            log.error("rules not applied to %s: %s: %s", evaluation.checkpoint,
                      type(error).__name__, error)  # fmt: skip

    def refresh(self, store: Store) -> None:
        """Rebuild from the store after it failed mid-decision, and prove that it commits."""
        self.start(store)
        with store.transaction():
            for name, decisions in self.decisions.items():
                store.save_rule_states(name, decisions.engine.state())

    def reload(self, store: Store) -> None:
        """SIGHUP: re-read the rules; broken ones are refused and the old ones kept."""
        try:
            fresh = load_config(self.config.source)  # inline rules live in the config file
            rules = load_rules(fresh.rules, fresh.source)
            RuleEngine(rules)  # e.g. two rules with one name: refuse before replacing
        except (ConfigError, ValueError) as error:
            log.error("rules not reloaded, keeping the previous ones: %s", error)
            return
        self.rules = rules
        try:
            self.start(store)
        except StoreError:
            self._held.add(self.refresh)
            raise
        log.info("rules reloaded: %d rule(s) from %s", len(rules.rules), rules.source)
