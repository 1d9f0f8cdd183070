"""The sidecar: watch → queue → evaluate → store → metrics, until told to stop.

The daemon wires; it computes nothing. Watchers (one per run, their own threads) hand complete
checkpoints to the queue; this module's single evaluation loop takes them in step order,
evaluates, stores and exports. One bad checkpoint costs one log line and one counted error,
never the daemon: everything already stored stays stored. SIGTERM/SIGINT stop it within
seconds (an evaluation in flight is abandoned, the store stays consistent because every write
is one transaction); SIGHUP re-reads the rules.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from monitor.config.schema import MonitorConfig, load_config
from monitor.daemon.decisions import RunDecisions
from monitor.daemon.outcomes import (
    Problem,
    error_reason,
    export_evaluation,
    record_error,
    record_problem,
)
from monitor.daemon.work_queue import CheckpointQueue
from monitor.errors import CheckpointError, ConfigError, EngineError
from monitor.evaluation.evaluator import Evaluation, Evaluator
from monitor.exporter.metrics import MonitorMetrics
from monitor.exporter.server import MetricsServer
from monitor.rules.engine import RuleEngine
from monitor.rules.spec import RuleSet, load_rules
from monitor.store.store import Store
from monitor.watching import Candidate, RunWatcher

log = logging.getLogger("monitor.daemon")

TAKE_TIMEOUT = 0.25  # seconds: how quickly the loop notices a stop request while idle


class _Abandon(BaseException):
    """Raised inside an evaluation by the stop signal (BaseException: no handler eats it)."""


class Daemon:
    """Runs until ``request_stop`` (or a signal); ``run`` returns the process exit code."""

    def __init__(self, config: MonitorConfig, metrics: MonitorMetrics | None = None) -> None:
        self.config = config
        self.metrics = (
            metrics
            if metrics is not None
            else MonitorMetrics(per_class_limit=config.metrics.per_class_limit)
        )
        self.queue = CheckpointQueue(config.watch.backlog, on_depth=self.metrics.set_queue_depth)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._problems: queue.SimpleQueue[Problem] = queue.SimpleQueue()
        self._evaluating = False
        self._evaluated = 0
        self.rules: RuleSet | None = None
        self.metrics_port: int | None = None
        self._decisions: dict[str, RunDecisions] = {}
        self._known: frozenset[tuple[str, str]] = frozenset()  # (run, fingerprint) stored before

    # -- signals ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self._stop.set()
        if self._evaluating:
            raise _Abandon

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded use (tests, notebooks): the caller stops us with request_stop
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    # -- callbacks from watcher threads ----------------------------------------------------

    def _on_ready(self, candidate: Candidate) -> None:
        if (candidate.run, candidate.fingerprint) not in self._known:
            self.metrics.count_discovered(candidate.run)  # counted when queued: a stall shows
        self.queue.put(candidate)

    def _on_problem(self, run: str, path: Path | None, reason: str, message: str) -> None:
        self.metrics.count_error(run, reason)
        self._problems.put(Problem(run, path, reason, message))

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        self._install_signal_handlers()  # first: a stop during a slow start-up is clean too
        self.rules = load_rules(config.rules, config.source)
        server = None
        if config.metrics.enabled:  # first, so /healthz answers while the model loads
            server = MetricsServer(self.metrics.registry, lambda: self.metrics.is_ready,
                                   config.metrics).start()  # fmt: skip
            self.metrics_port = server.port
            log.info("metrics on %s", server.url)
        watchers: list[RunWatcher] = []
        try:
            evaluator = Evaluator(config)
            with Store(config.store.path) as store:
                self._known = frozenset((e.run, e.fingerprint) for e in store.evaluations())
                for run in config.runs:
                    self.metrics.add_run(run.name)
                self._start_decisions(store)
                for run in config.runs:
                    watcher = RunWatcher(
                        run,
                        config.watch,
                        config.checkpoint.step_regex,
                        on_ready=self._on_ready,
                        on_problem=self._on_problem,
                    )
                    watcher.start()
                    watchers.append(watcher)
                self.metrics.set_ready(True)
                log.info(
                    "watching %d run(s) on %s; store %s",
                    len(config.runs),
                    evaluator.device,
                    config.store.path,
                    extra={"fields": {"runs": ",".join(r.name for r in config.runs)}},
                )
                self._loop(store, evaluator)
        finally:
            self.metrics.set_ready(False)
            for watcher in watchers:
                watcher.stop()
            if server is not None:
                server.stop()
        log.info("stopped", extra={"fields": {"evaluated": self._evaluated}})
        return 0

    def _loop(self, store: Store, evaluator: Evaluator) -> None:
        heartbeat = self.config.watch.heartbeat_interval
        last_activity = time.monotonic()
        while not self._stop.is_set():
            self._drain_problems(store)
            if self._reload.is_set():
                self._reload.clear()
                self._reload_rules(store)
            taken = self.queue.take(timeout=TAKE_TIMEOUT)
            if taken is None:
                if time.monotonic() - last_activity >= heartbeat:
                    self._heartbeat()
                    last_activity = time.monotonic()
                continue
            for skipped in taken.skipped:
                if not store.is_evaluated(skipped.run, skipped.fingerprint):
                    store.record_skipped(
                        skipped.run,
                        str(skipped.path),
                        skipped.fingerprint,
                        skipped.step,
                        "backlog-latest",
                    )
                    self.metrics.count_skipped(skipped.run, "backlog-latest")
                    log.info("skipped %s (backlog: latest)", skipped.path)
            self._process(store, evaluator, taken.candidate)
            last_activity = time.monotonic()
        self._drain_problems(store)

    def _process(self, store: Store, evaluator: Evaluator, candidate: Candidate) -> None:
        run = candidate.run
        if store.is_evaluated(run, candidate.fingerprint):
            log.debug("already evaluated: %s", candidate.path)
            return
        started = time.monotonic()
        try:
            evaluation = self._evaluate(evaluator, candidate)
        except _Abandon:
            log.info("abandoned the evaluation of %s to stop", candidate.path)
            return
        except CheckpointError as error:
            record_error(store, self.metrics, candidate, error_reason(error), str(error))
            return
        except EngineError as error:
            record_error(store, self.metrics, candidate, "engine", str(error))
            return
        except Exception as error:  # one checkpoint must never take the daemon down
            log.debug("evaluation failed", exc_info=True)
            record_error(
                store, self.metrics, candidate, "internal", f"{type(error).__name__}: {error}"
            )
            return
        duration = time.monotonic() - started
        evaluation_id = store.record_evaluation(
            run,
            path=str(candidate.path),
            fingerprint=candidate.fingerprint,
            size=candidate.size,
            mtime_ns=candidate.mtime_ns,
            evaluation=evaluation.to_dict(),
            duration_seconds=duration,
        )
        self._evaluated += 1
        export_evaluation(self.metrics, evaluation, duration)
        self.after_evaluation(store, evaluation_id, evaluation)

    def _evaluate(self, evaluator: Evaluator, candidate: Candidate) -> Evaluation:
        self._evaluating = True
        try:
            if self._stop.is_set():
                raise _Abandon
            return evaluator.evaluate(candidate.path, run=candidate.run)
        finally:
            self._evaluating = False

    def after_evaluation(self, store: Store, evaluation_id: int, evaluation: Evaluation) -> None:
        """Hand the stored evaluation to its run's rules (verdicts, stop signal)."""
        decisions = self._decisions.get(evaluation.run or "")
        if decisions is None:
            return
        try:
            decisions.observe(evaluation_id, evaluation)
            self.metrics.set_rule_states(decisions.run.name, decisions.rules,
                                         decisions.engine.state())  # fmt: skip
        except Exception as error:  # the evaluation is stored; a rules failure must not stop us
            log.debug("rules failed", exc_info=True)
            self.metrics.count_error(evaluation.run or "", "rules")
            log.error("rules not applied to %s: %s: %s", evaluation.checkpoint,
                      type(error).__name__, error)  # fmt: skip

    def _start_decisions(self, store: Store) -> None:
        """Rules for every run, their state replayed from the stored history."""
        assert self.rules is not None
        self._decisions = {
            run.name: RunDecisions(run, self.rules, self.config, store, self.metrics)
            for run in self.config.runs
        }
        for name, decisions in self._decisions.items():  # the replayed state, before any news
            self.metrics.set_rule_states(name, decisions.rules, decisions.engine.state())

    # -- reporting -------------------------------------------------------------------------

    def _drain_problems(self, store: Store) -> None:
        while True:
            try:
                problem = self._problems.get_nowait()
            except queue.Empty:
                return
            record_problem(store, problem)

    def _heartbeat(self) -> None:
        log.info(
            "idle",
            extra={"fields": {"evaluated": self._evaluated, "queue": self.queue.depth()}},
        )

    def _reload_rules(self, store: Store) -> None:
        try:
            fresh = load_config(self.config.source)  # inline rules live in the config file
            rules = load_rules(fresh.rules, fresh.source)
            RuleEngine(rules)  # e.g. two rules with one name: refuse before replacing
        except (ConfigError, ValueError) as error:
            log.error("rules not reloaded, keeping the previous ones: %s", error)
            return
        self.rules = rules
        self._start_decisions(store)
        log.info("rules reloaded: %d rule(s) from %s", len(rules.rules), rules.source)
