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
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from monitor.config.schema import MonitorConfig
from monitor.daemon.bad_input import Failure
from monitor.daemon.boards import Boards
from monitor.daemon.health import Health
from monitor.daemon.held_writes import HeldWrites
from monitor.daemon.outcomes import (
    Problem,
    error_reason,
)
from monitor.daemon.recorder import Recorder
from monitor.daemon.run_rules import RunRules
from monitor.daemon.store_guard import StoreGuard
from monitor.daemon.watchers import Watchers
from monitor.daemon.work_queue import CheckpointQueue, Taken
from monitor.distributed.launch import RankFailure
from monitor.errors import CheckpointError, ConfigError, EngineError
from monitor.evaluation.evaluator import Evaluation, Evaluator
from monitor.exporter.metrics import MonitorMetrics
from monitor.exporter.server import MetricsServer
from monitor.store.database import StoreError
from monitor.store.lock import StoreLock
from monitor.store.store import Store
from monitor.watching import Candidate

log = logging.getLogger("monitor.daemon")

TAKE_TIMEOUT = 0.25  # seconds: how quickly the loop notices a stop request while idle


class _Abandon(BaseException):
    """Raised inside an evaluation by the stop signal (BaseException: no handler eats it)."""


class Daemon:
    """Runs until ``request_stop`` (or a signal); ``run`` returns the process exit code."""

    def __init__(
        self,
        config: MonitorConfig,
        metrics: MonitorMetrics | None = None,
        evaluator: Callable[[MonitorConfig], Evaluator] = Evaluator,  # rank 0's: ``ranks``
    ) -> None:
        self.config = config
        self._make_evaluator = evaluator
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
        self.metrics_port: int | None = None
        self._known: frozenset[tuple[str, str]] = frozenset()  # (run, fingerprint) stored before
        self.health = Health(config.metrics.stall_timeout, config.metrics.liveness_grace)
        self._guard = StoreGuard(self.metrics, self.health)
        self._held = HeldWrites()
        self.rules = RunRules(config, self.metrics, self._held)
        self.boards = Boards(config, self.metrics)
        self._record = Recorder(self.metrics, self._held, self._decide)
        self._retake: Taken | None = None  # taken from the queue, not processed: store failed
        self._exit_code = 0

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

    def _decide(self, store: Store, evaluation_id: int, evaluation: Evaluation) -> None:
        """Rules first; then TensorBoard, as its own held write, shows what they stored."""
        self.rules.observe(store, evaluation_id, evaluation)
        self._held.add_next(lambda store: self.boards.evaluated(store, evaluation_id, evaluation))

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        self._install_signal_handlers()  # first: a stop during a slow start-up is clean too
        self.rules.load()
        lock = StoreLock(config.store.path).acquire()  # one daemon per store, else exit 2
        server = None
        watchers = Watchers(config, self.health, self._on_ready, self._on_problem)
        try:
            if config.metrics.enabled:  # first, so /healthz answers while the model loads
                health = self.health
                try:
                    server = MetricsServer(
                        self.metrics.registry, health.is_ready, config.metrics,
                        is_live=health.is_live,
                    ).start()  # fmt: skip
                except ConfigError as error:  # a taken port, unreadable TLS files: exit 2
                    raise ConfigError(f"{config.source}: {error}") from None
                self.metrics_port = server.port
                log.info("metrics on %s", server.url)
            evaluator = self._make_evaluator(config)
            with Store(config.store.path) as store:
                failed = self._record.start(store, config.watch.corrupt_after)
                evaluated = {(e.run, e.fingerprint) for e in store.evaluations()}
                self._known = frozenset(evaluated | failed)
                for run in config.runs:
                    self.metrics.add_run(run.name)
                self.rules.start(store)
                self.boards.start(store, self._stop.is_set)
                watchers.start()
                self.health.start()
                self.metrics.set_ready(self.health.is_ready())
                log.info(
                    "watching %d run(s) on %s; store %s",
                    len(config.runs),
                    evaluator.device,
                    config.store.path,
                    extra={"fields": {"runs": ",".join(r.name for r in config.runs)}},
                )
                self._loop(store, evaluator, watchers)
        finally:
            self.health.finish()
            self.metrics.set_ready(False)
            watchers.stop()
            self.boards.close()
            if server is not None:
                server.stop()
            lock.release()
        log.info("stopped", extra={"fields": {"evaluated": self._record.evaluated}})
        return self._exit_code

    def _loop(self, store: Store, evaluator: Evaluator, watchers: Watchers) -> None:
        heartbeat = self.config.watch.heartbeat_interval
        last_activity = time.monotonic()
        while not self._stop.is_set():
            self.health.turned()
            if not watchers.check():
                self._exit_code = 1  # a watcher died twice: let the supervisor restart us
                break
            self.metrics.set_ready(self.health.is_ready())
            if (wait := self._guard.waiting()) > 0:
                self._stop.wait(min(wait, TAKE_TIMEOUT))
                continue
            try:
                self.rules.follow_attempts()  # a reset by hand, from another process
                for decisions in self.rules.decisions.values():  # stop files not written yet
                    decisions.retry_pending_stop()
                busy = self._turn(store, evaluator)
            except StoreError as error:
                self._guard.failed(error)
                continue
            self._guard.succeeded()
            if busy:
                last_activity = time.monotonic()
            elif time.monotonic() - last_activity >= heartbeat:
                self._heartbeat()
                last_activity = time.monotonic()
        try:
            self._drain_problems()
            self._held.flush(store)
        except StoreError as error:
            log.error("stopping with %d write(s) the store did not take: %s", len(self._held),
                      error)  # fmt: skip

    def _turn(self, store: Store, evaluator: Evaluator) -> bool:
        """One pass; True when a checkpoint was taken. A ``StoreError`` leaves its work held
        (``_held``, ``_retake``) for the next pass."""
        self._drain_problems()
        self._record.confirmed()
        self._held.flush(store)
        if self._reload.is_set():
            self._reload.clear()
            self.rules.reload(store)
        taken = self._retake or self.queue.take(timeout=TAKE_TIMEOUT)
        self._retake = None
        if taken is None:
            return False
        for skipped in taken.skipped:
            self._record.skipped(skipped)
        try:
            self._held.flush(store)
            self._process(store, evaluator, taken.candidate)
        except StoreError:
            self._retake = Taken(taken.candidate, ())  # its skipped ones are held already
            raise
        return True

    def _process(self, store: Store, evaluator: Evaluator, candidate: Candidate) -> None:
        run = candidate.run
        if store.is_evaluated(run, candidate.fingerprint):
            log.debug("already evaluated: %s", candidate.path)
            return
        if self._record.bad.skip(candidate):
            return
        started = time.monotonic()
        try:
            evaluation = self._evaluate(evaluator, candidate)
        except _Abandon:
            log.info("abandoned the evaluation of %s to stop", candidate.path)
            return
        except RankFailure as error:  # not the checkpoint's fault: evaluated after a restart
            if not self._stop.is_set():
                log.error("%s; exiting with 1 so that torchrun restarts every rank", error)
                self._exit_code = 1
                self._stop.set()
            return
        except CheckpointError as error:
            self._record.failure(Failure(candidate, error_reason(error), str(error)))
            return
        except EngineError as error:
            self._record.failure(Failure(candidate, "engine", str(error)))
            return
        except Exception as error:  # one checkpoint must never take the daemon down
            log.debug("evaluation failed", exc_info=True)
            self._record.failure(Failure(candidate, "internal", f"{type(error).__name__}: {error}"))
            return
        duration = time.monotonic() - started
        self._record.evaluation(candidate, evaluation, duration)
        self._held.flush(store)

    def _evaluate(self, evaluator: Evaluator, candidate: Candidate) -> Evaluation:
        self._evaluating = True
        try:
            if self._stop.is_set():
                raise _Abandon
            return evaluator.evaluate(candidate.path, run=candidate.run)
        finally:
            self._evaluating = False

    # -- reporting -------------------------------------------------------------------------

    def _drain_problems(self) -> None:
        """Watchers' problems, held in arrival order until stored."""
        while True:
            try:
                problem = self._problems.get_nowait()
            except queue.Empty:
                return
            self._record.problem(problem)

    def _heartbeat(self) -> None:
        log.info(
            "idle",
            extra={"fields": {"evaluated": self._record.evaluated, "queue": self.queue.depth()}},
        )
