"""RunWatcher against real files in a temporary folder, with both real observers.

Every test starts real watchers (inotify and polling), writes checkpoints the way trainers do
and waits, with a deadline, for what the watcher hands over. Settle times are short so the
suite stays fast; an autouse fixture fails any test that leaks a thread.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

from monitor.checkpoints.reader import detect_format
from monitor.config.schema import DEFAULT_PATTERNS, RunConfig, WatchConfig
from monitor.watching import Candidate, RunWatcher
from tests.checkpoint_writers import trained_net, write_dcp
from tests.conftest import REPO

STEP = r"step[_=-]?(\d+)"
SETTLE = 0.2
# How long to wait for something that should happen at once. Generous, for a loaded machine:
# a test that must see an event "before settle_seconds" sets settle_seconds far longer still.
PATIENCE = 30.0
LONG_SETTLE = 4 * PATIENCE
OBSERVERS = pytest.mark.parametrize("observer", ["native", "polling"])


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Collector:
    """The daemon's side of the callbacks: thread-safe lists, with the time of each arrival."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: list[tuple[float, Candidate]] = []
        self._problems: list[tuple[str, Path | None, str, str]] = []

    def on_ready(self, candidate: Candidate) -> None:
        with self._lock:
            self._ready.append((time.monotonic(), candidate))

    def on_problem(self, run: str, path: Path | None, reason: str, message: str) -> None:
        with self._lock:
            self._problems.append((run, path, reason, message))

    @property
    def ready(self) -> list[Candidate]:
        with self._lock:
            return [candidate for _, candidate in self._ready]

    @property
    def arrivals(self) -> list[float]:
        with self._lock:
            return [at for at, _ in self._ready]

    @property
    def problems(self) -> list[tuple[str, Path | None, str, str]]:
        with self._lock:
            return list(self._problems)

    def wait(self, count: int, timeout: float = PATIENCE) -> list[Candidate]:
        """Wait for ``count`` candidates, then a little longer to catch any duplicate."""
        assert eventually(lambda: len(self.ready) >= count, timeout), self.ready
        time.sleep(SETTLE + 0.15)  # a duplicate would arrive within a settle and a tick
        return self.ready


Start = Callable[..., tuple[RunWatcher, Collector]]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert eventually(lambda: set(threading.enumerate()) <= before, PATIENCE), [
        thread.name for thread in set(threading.enumerate()) - before
    ]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start a watcher on a folder; every watcher is stopped when the test ends."""
    watchers: list[RunWatcher] = []

    def start(
        root: Path,
        observer: str = "native",
        *,
        patterns: tuple[str, ...] = DEFAULT_PATTERNS,
        step_regex: str = STEP,
        no_match_warning_seconds: float = 600.0,
        **watch: Any,
    ) -> tuple[RunWatcher, Collector]:
        settings = {"observer": observer, "poll_interval": 0.1, "settle_seconds": SETTLE, **watch}
        collector = Collector()
        watcher = RunWatcher(
            RunConfig(name="run-a", path=root, patterns=list(patterns)),
            WatchConfig(**settings),
            step_regex,
            on_ready=collector.on_ready,
            on_problem=collector.on_problem,
            no_match_warning_seconds=no_match_warning_seconds,
        )
        watcher.start()
        watchers.append(watcher)
        assert eventually(lambda: watcher.observer_kind is not None or not root.is_dir(), PATIENCE)
        return watcher, collector

    yield start
    for watcher in watchers:
        watcher.stop()


def write(path: Path, size: int = 2048) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


# -- single files ---------------------------------------------------------------------------


@OBSERVERS
def test_a_direct_write_is_handed_over_once(tmp_path: Path, start: Start, observer: str) -> None:
    _, seen = start(tmp_path, observer)
    path = write(tmp_path / "step_1.pt", 5000)
    (candidate,) = seen.wait(1)
    assert candidate.path == path and candidate.run == "run-a"
    assert (candidate.step, candidate.size, candidate.is_dir) == (1, 5000, False)
    assert candidate.mtime_ns == path.stat().st_mtime_ns


@OBSERVERS
def test_temp_then_rename(tmp_path: Path, start: Start, observer: str) -> None:
    # Written before the watcher starts, so the polling observer's first snapshot holds it
    # and the rename is seen as a move (a later snapshot would race the rename).
    temp = write(tmp_path / "step_2.pt.tmp", 100_000)
    _, seen = start(tmp_path, observer, settle_seconds=LONG_SETTLE)
    os.replace(temp, tmp_path / "step_2.pt")
    # Renamed into place means whole: handed over without waiting out settle_seconds, so
    # long before this wait (shorter than the settle) ends.
    (candidate,) = seen.wait(1, timeout=PATIENCE)
    assert candidate.path == tmp_path / "step_2.pt" and candidate.size == 100_000


@pytest.mark.slow
@OBSERVERS
def test_a_slow_writer_is_handed_over_once_when_it_finishes(
    tmp_path: Path, start: Start, observer: str
) -> None:
    _, seen = start(tmp_path, observer, settle_seconds=0.6)
    path = tmp_path / "step_3.pt"
    finished: list[float] = []

    def writer() -> None:
        with path.open("wb") as handle:
            for _ in range(13):  # about 2 s, never pausing longer than a quarter of settle
                handle.write(os.urandom(4096))
                handle.flush()
                time.sleep(0.15)
        finished.append(time.monotonic())

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    (candidate,) = seen.wait(1)
    assert candidate.size == 13 * 4096 == path.stat().st_size
    assert seen.arrivals[0] >= finished[0]


@OBSERVERS
def test_a_garbage_file_is_still_handed_over_once(
    tmp_path: Path, start: Start, observer: str
) -> None:
    _, seen = start(tmp_path, observer)
    garbage = b"PK\x03\x04 truncated, not a checkpoint"
    (tmp_path / "step_4.pt").write_bytes(garbage)
    (candidate,) = seen.wait(1)  # whether it loads is the loader's business
    assert candidate.size == len(garbage)


@OBSERVERS
def test_a_file_deleted_right_after_it_appears_is_dropped_quietly(
    tmp_path: Path, start: Start, observer: str
) -> None:
    _, seen = start(tmp_path, observer)
    for number in range(5):
        write(tmp_path / f"step_{number}.pt").unlink()
    time.sleep(4 * SETTLE)
    assert seen.ready == [] and seen.problems == []
    write(tmp_path / "step_9.pt")  # and it is still watching
    assert [c.step for c in seen.wait(1)] == [9]


@OBSERVERS
def test_a_burst_of_50_checkpoints_each_once(tmp_path: Path, start: Start, observer: str) -> None:
    _, seen = start(tmp_path, observer)
    paths = {write(tmp_path / f"step_{number}.pt", 1024 + number) for number in range(50)}
    got = seen.wait(50)
    assert len(got) == 50 and {c.path for c in got} == paths
    assert len({c.fingerprint for c in got}) == 50


@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")  # watchdog's own race
@OBSERVERS
def test_nested_folders_count(tmp_path: Path, start: Start, observer: str) -> None:
    _, seen = start(tmp_path, observer)
    first = write(tmp_path / "ckpts" / "epoch_3" / "model.pt")
    second = write(tmp_path / "ckpts" / "step_7" / "deeper" / "model.pt")
    got = {c.path: c.step for c in seen.wait(2)}
    assert got == {first: None, second: 7}  # the step of the nearest folder that names one


@OBSERVERS
def test_a_rewritten_file_is_handed_over_again(tmp_path: Path, start: Start, observer: str) -> None:
    _, seen = start(tmp_path, observer)
    path = write(tmp_path / "step_5.pt")
    seen.wait(1)
    path.read_bytes()  # reading it (as the daemon will) is no change
    time.sleep(3 * SETTLE)
    assert len(seen.ready) == 1
    write(path)  # same size, new content
    first, second = seen.wait(2)
    assert first.path == second.path and first.fingerprint != second.fingerprint


def test_a_copy_with_the_same_content_is_not_handed_over_twice(
    tmp_path: Path, start: Start
) -> None:
    _, seen = start(tmp_path)
    path = write(tmp_path / "step_6.pt")
    seen.wait(1)
    shutil.copy2(path, tmp_path / "last.pt")  # same bytes, same times: the same checkpoint
    time.sleep(4 * SETTLE)
    assert [c.path for c in seen.ready] == [path]


def test_temporary_and_hidden_names_are_ignored(tmp_path: Path, start: Start) -> None:
    _, seen = start(tmp_path)
    for name in ("a.pt.tmp", ".b.pt", "c.pt~", "d.pt.partial", "e.pt.incomplete", "notes.txt"):
        write(tmp_path / name)
    write(tmp_path / ".cache" / "f.pt")
    write(tmp_path / "step_1.pt")
    assert [c.path.name for c in seen.wait(1)] == ["step_1.pt"]


# -- start-up, directories, problems --------------------------------------------------------


@OBSERVERS
def test_existing_checkpoints_are_handed_over_at_once_in_step_order(
    tmp_path: Path, start: Start, observer: str
) -> None:
    old = time.time() - 10 * LONG_SETTLE
    names = ["step_10.pt", "last.pt", "step_2.pt", "step_1.pt", "ckpts/step_5/model.pt"]
    for age, name in enumerate(names):
        os.utime(write(tmp_path / name), (old - age, old - age))
    _, seen = start(tmp_path, observer, settle_seconds=LONG_SETTLE)
    # Older than settle_seconds when found: handed over at once, long before the settle.
    assert eventually(lambda: len(seen.ready) == 5, PATIENCE), seen.ready
    assert [c.step for c in seen.ready] == [1, 2, 5, 10, None]


@OBSERVERS
def test_a_run_directory_created_after_start(
    tmp_path: Path, start: Start, observer: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="monitor.watching")
    root = tmp_path / "later" / "run"
    _, seen = start(root, observer)
    time.sleep(0.5)
    root.mkdir(parents=True)
    write(root / "step_1.pt")
    assert [c.step for c in seen.wait(1)] == [1]
    waiting = [r for r in caplog.records if "does not exist yet" in r.getMessage()]
    assert len(waiting) == 1 and waiting[0].levelno == logging.WARNING


def test_the_run_directory_may_vanish_and_come_back(tmp_path: Path, start: Start) -> None:
    root = tmp_path / "run"
    write(root / "step_1.pt")
    _, seen = start(root)
    seen.wait(1)
    shutil.rmtree(root)
    time.sleep(0.5)
    write(root / "step_2.pt")
    assert [c.step for c in seen.wait(2)] == [1, 2]


@OBSERVERS
def test_a_symlinked_run_directory(tmp_path: Path, start: Start, observer: str) -> None:
    """inotify would watch the link itself and see nothing: the watcher watches its target."""
    (tmp_path / "scratch").mkdir()
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "scratch")
    _, seen = start(link, observer, rescan_interval=10 * PATIENCE)
    write(tmp_path / "scratch" / "step_1.pt")
    (candidate,) = seen.wait(1)  # long before a rescan would find it
    assert candidate.path == link / "step_1.pt"


def test_rescans_hand_over_nothing_twice(tmp_path: Path, start: Start) -> None:
    for number in range(20):
        write(tmp_path / f"step_{number}.pt")
    write(tmp_path / "folder" / "step_99" / ".metadata")
    _, seen = start(tmp_path, rescan_interval=0.2)
    seen.wait(21)
    time.sleep(1.0)  # five rescans
    assert len(seen.ready) == 21
    write(tmp_path / "step_5.pt")  # but a rewrite still counts
    assert len(seen.wait(22)) == 22


def test_a_pattern_that_matches_nothing_is_reported_once(tmp_path: Path, start: Start) -> None:
    write(tmp_path / "weights.bin")
    _, seen = start(tmp_path, no_match_warning_seconds=0.5)
    assert eventually(lambda: len(seen.problems) >= 1, PATIENCE)
    time.sleep(0.5)
    ((run, path, reason, message),) = seen.problems
    assert (run, path, reason) == ("run-a", tmp_path, "no-match")
    assert "weights.bin" in message and "*.pt" in message


def test_auto_chooses_inotify_on_a_local_disk(tmp_path: Path, start: Start) -> None:
    watcher, _ = start(tmp_path, "auto")
    assert watcher.observer_kind == "native"


def test_stop_joins_every_thread_quickly(tmp_path: Path) -> None:
    baseline = set(threading.enumerate())
    watchers = []
    for observer, root in [("native", tmp_path / "a"), ("polling", tmp_path / "b")]:
        root.mkdir()
        run = RunConfig(name=observer, path=root)
        watch = WatchConfig(observer=observer, poll_interval=LONG_SETTLE, settle_seconds=2.0)
        watchers.append(RunWatcher(run, watch, STEP, on_ready=print, on_problem=print))
    missing = RunConfig(name="missing", path=tmp_path / "nowhere")
    watchers.append(RunWatcher(missing, WatchConfig(poll_interval=LONG_SETTLE), STEP,
                               on_ready=print, on_problem=print))  # fmt: skip
    for watcher in watchers:
        watcher.start()
    assert eventually(lambda: all(w.observer_kind for w in watchers[:2]), PATIENCE)
    write(watchers[0].root / "step_1.pt")  # something waiting to settle
    assert len(set(threading.enumerate()) - baseline) >= 6
    began = time.monotonic()
    for watcher in watchers:
        watcher.stop()
    # Each stop joins its threads (within its own 5 s), never waiting out a poll interval.
    assert time.monotonic() - began < LONG_SETTLE / 2
    assert set(threading.enumerate()) == baseline


def test_settings_are_checked_when_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no_match_warning_seconds"):
        RunWatcher(
            RunConfig(name="a", path=tmp_path), WatchConfig(), STEP,
            on_ready=print, on_problem=print, no_match_warning_seconds=0,
        )  # fmt: skip


# -- folder checkpoints ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dcp_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A real torch.distributed.checkpoint save, its files in the order a writer finishes them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        folder = write_dcp(tmp_path_factory.mktemp("dcp"), trained_net())
    return sorted(folder.iterdir(), key=lambda p: (p.name == ".metadata", p.name))


@pytest.mark.slow
@OBSERVERS
def test_a_dcp_folder_written_file_by_file(
    tmp_path: Path, start: Start, observer: str, dcp_files: list[Path]
) -> None:
    _, seen = start(tmp_path, observer)
    folder = tmp_path / "step_100"
    folder.mkdir()
    for source in dcp_files:
        time.sleep(3 * SETTLE)  # long enough to look settled, were .metadata not awaited
        assert seen.ready == [], f"handed over before {source.name} was written"
        shutil.copyfile(source, folder / source.name)
    (candidate,) = seen.wait(1)
    assert (candidate.path, candidate.is_dir, candidate.step) == (folder, True, 100)
    assert candidate.size == sum(p.stat().st_size for p in dcp_files)
    assert detect_format(candidate.path) == "dcp"


@OBSERVERS
def test_a_hugging_face_folder_is_one_checkpoint(
    tmp_path: Path, start: Start, observer: str
) -> None:
    _, seen = start(tmp_path, observer, step_regex=r"checkpoint-(\d+)")
    state = trained_net().state_dict()
    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    for number, half in enumerate(halves, start=1):  # shards first, the index last
        shard = {key: state[key].contiguous() for key in half}
        save_file(shard, folder / f"model-0000{number}-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (candidate,) = seen.wait(1)
    assert (candidate.path, candidate.is_dir, candidate.step) == (folder, True, 500)
    assert detect_format(candidate.path) == "hf"


def test_a_folder_renamed_into_place(tmp_path: Path, start: Start) -> None:
    staging = tmp_path / "tmp-checkpoint-600"  # transformers.Trainer's staging name
    staging.mkdir()
    save_file(trained_net().state_dict(), staging / "model.safetensors")
    _, seen = start(tmp_path, step_regex=r"checkpoint-(\d+)", settle_seconds=LONG_SETTLE)
    os.replace(staging, tmp_path / "checkpoint-600")
    (candidate,) = seen.wait(1)  # renamed into place: long before the settle is over
    assert candidate.path == tmp_path / "checkpoint-600" and candidate.step == 600


@OBSERVERS
def test_a_nemo_unfinished_marker_holds_a_checkpoint_back(
    tmp_path: Path, start: Start, observer: str
) -> None:
    _, seen = start(tmp_path, observer)
    marker = write(tmp_path / "step=5-unfinished", 0)
    write(tmp_path / "step=5.ckpt")
    write(tmp_path / "dist" / "step=6-unfinished", 0)
    write(tmp_path / "dist" / "step=6.ckpt" / "__0_0.distcp")
    write(tmp_path / "dist" / "step=6.ckpt" / ".metadata")
    time.sleep(4 * SETTLE)
    assert seen.ready == []
    marker.unlink()
    assert [c.path.name for c in seen.wait(1)] == ["step=5.ckpt"]
    (tmp_path / "dist" / "step=6-unfinished").unlink()
    assert [c.step for c in seen.wait(2)] == [5, 6]


def test_ready_markers_hold_folders_back_but_not_files(tmp_path: Path, start: Start) -> None:
    _, seen = start(tmp_path, patterns=("step_*",), ready_markers=["commit_success.txt"])
    write(tmp_path / "step_7" / "model.pt")
    write(tmp_path / "step_8.pt")  # a single file has nowhere to put a marker
    assert [c.step for c in seen.wait(1)] == [8]
    time.sleep(2 * SETTLE)
    write(tmp_path / "step_7" / "commit_success.txt", 0)
    got = seen.wait(2)
    assert [(c.step, c.is_dir) for c in got] == [(8, False), (7, True)]


# -- in a child process: an unreadable directory, an inotify that cannot start ---------------

CHILD = """
import json, logging, os, resource, sys, time
from pathlib import Path
from monitor.config.schema import RunConfig, WatchConfig
from monitor.watching import RunWatcher

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
spec = json.loads(sys.argv[1])
events = []
watchers = [
    RunWatcher(
        RunConfig(name=name, path=Path(path)),
        WatchConfig(observer=observer, poll_interval=0.1, settle_seconds=0.2),
        r"step_(\\d+)",
        on_ready=lambda c: events.append(["ready", c.run, c.path.name]),
        on_problem=lambda run, path, reason, message: events.append([reason, run, message]),
    )
    for name, path, observer in spec["runs"]
]
limits = resource.getrlimit(resource.RLIMIT_NOFILE)
if spec["starve"]:  # one free descriptor more than inotify_init needs: its pipe fails
    lowest = os.dup(0)
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest + 2, limits[1]))
for watcher in watchers:
    watcher.start()
deadline = time.monotonic() + 10
while spec["starve"] and watchers[0].observer_kind is None and time.monotonic() < deadline:
    time.sleep(0.01)
resource.setrlimit(resource.RLIMIT_NOFILE, limits)  # the observer is chosen: back to normal
time.sleep(0.5)
for path in spec["write"]:
    Path(path).write_bytes(b"written while watching")
time.sleep(1.0)
for watcher in watchers:
    watcher.stop()
print(json.dumps({"kinds": [w.observer_kind for w in watchers], "events": events}))
"""


def _without_root_privileges() -> None:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (from the bounding set, so the exec'd
    child lacks them): root then obeys file modes like anyone else."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_child(spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
        preexec_fn=_without_root_privileges if os.geteuid() == 0 else None,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.splitlines()[-1]), child.stderr


@pytest.mark.slow
def test_unreadable_directories_are_reported_once_and_watching_goes_on() -> None:
    """With both observers; the child drops root's privilege to read anything, if it has it."""
    base = Path(tempfile.mkdtemp(prefix="watching-"))
    locked = [base / "good" / "locked", base / "closed"]
    try:
        write(base / "good" / "step_1.pt")
        write(base / "good" / "locked" / "step_2.pt")
        write(base / "closed" / "step_3.pt")
        for folder in locked:
            folder.chmod(0)
        runs = [
            [f"{name}-{observer}", str(base / name), observer]
            for name in ("good", "closed")
            for observer in ("native", "polling")
        ]
        result, _ = run_child({"runs": runs, "starve": False, "write": []})
    finally:
        for folder in locked:
            folder.chmod(0o755)
        shutil.rmtree(base)
    events = result["events"]
    for observer in ("native", "polling"):
        assert ["ready", f"good-{observer}", "step_1.pt"] in events
        problems = [e for e in events if e[0] != "ready" and e[1].endswith(observer)]
        (good,) = [e for e in problems if e[1].startswith("good")]
        (closed,) = [e for e in problems if e[1].startswith("closed")]
        assert good[0] == "unreadable" and "locked (Permission denied)" in good[2]
        assert closed[0] == "unreadable" and "the run directory" in closed[2]
    assert len(events) == 6, events


@pytest.mark.slow
def test_native_falls_back_to_polling_when_inotify_cannot_start(tmp_path: Path) -> None:
    spec = {
        "runs": [["a", str(tmp_path), "native"]],
        "starve": True,  # no file descriptors left for inotify, as at max_user_instances
        "write": [str(tmp_path / "step_1.pt")],
    }
    result, log = run_child(spec)
    assert result == {"kinds": ["polling"], "events": [["ready", "a", "step_1.pt"]]}
    warnings = [line for line in log.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "cannot watch" in warnings[0] and "polling" in warnings[0]
