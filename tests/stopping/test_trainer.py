"""The stop signal, trainer side: reading the stop file, polling it, and stopping real trainers.

The trainer-side module runs inside users' training jobs, so besides its answers these tests
check what it must not do: import torch, raise on a stray file, or let ranks disagree. The
Lightning and Hugging Face tests run only where those libraries are installed.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.stopping.stop_file import StopSignal, write_stop_file
from monitor.stopping.trainer import (
    MAX_STOP_FILE_BYTES,
    STALE_MARGIN,
    StopFilePoller,
    best_checkpoint,
    read_stop,
    should_stop,
    should_stop_distributed,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def make_signal(step: int = 40) -> StopSignal:
    return StopSignal(
        run="run-a",
        checkpoint=f"/ckpt/run-a/step_{step}.pt",
        step=step,
        rule="within-decline",
        reason="within-class stiffness fell below its best for 3 evaluations",
        metric="within",
        value=0.31,
        best=0.36,
    )


def written_after_the_ranks_start(*files: Path) -> None:
    """Date stop files an hour ahead: the trainers start after them, and a stop file older
    than the trainer is an earlier run's, which they ignore (tested on its own)."""
    ahead = time.time() + 3600
    for file in files:
        os.utime(file, (ahead, ahead))


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("monitor.trainer", "monitor.stopping.trainer",
         ["StopFilePoller", "read_stop", "read_stop_distributed", "should_stop",
          "should_stop_distributed"]),
        ("monitor.integrations.lightning", "monitor.stopping.integrations.lightning",
         ["StiffnessStopCallback"]),
        ("monitor.integrations.huggingface", "monitor.stopping.integrations.huggingface",
         ["StiffnessStopCallback"]),
        ("monitor.demo_trainer", "monitor.demo.trainer", ["build_mlp", "probe", "main"]),
    ],
    ids=["trainer", "lightning", "huggingface", "demo-factories"],
)  # fmt: skip
def test_the_first_import_paths_are_the_same_objects(old: str, new: str, names: list[str]) -> None:
    """Trainers written before the layout (and configs older demos wrote) keep working."""
    before, after = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(before, name) is getattr(after, name), name
    assert set(getattr(before, "__all__", names)) >= set(names) - {"main"}


# --- reading the file -----------------------------------------------------------------------


def test_a_valid_stop_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "STOP"
    signal = make_signal()
    write_stop_file(path, signal)
    assert read_stop(path) == signal.to_dict()
    assert should_stop(path) is True
    assert should_stop(str(path)) is True


def test_a_hand_written_json_object_stops_too(tmp_path: Path) -> None:
    (tmp_path / "STOP").write_text('{"reason": "manual"}')
    assert read_stop(tmp_path / "STOP") == {"reason": "manual"}


@pytest.mark.parametrize(
    "content",
    [b"", b"   \n", b"not json", b"[1, 2]", b"42", b'"STOP"', b"\xff\xfe\x00", b"[" * 100_000],
    ids=["empty", "blank", "text", "list", "number", "string", "binary", "deeply-nested"],
)
def test_invalid_content_is_no_stop(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "STOP").write_bytes(content)
    assert read_stop(tmp_path / "STOP") is None
    assert should_stop(tmp_path / "STOP") is False


def test_every_partial_write_of_a_stop_file_is_no_stop(tmp_path: Path) -> None:
    complete = make_signal().to_json().rstrip("\n").encode()
    path = tmp_path / "STOP"
    for end in range(len(complete)):
        path.write_bytes(complete[:end])
        assert read_stop(path) is None, complete[:end]
    path.write_bytes(complete)
    assert read_stop(path) is not None


def test_missing_folder_and_oversized_paths_are_no_stop(tmp_path: Path) -> None:
    assert read_stop(tmp_path / "STOP") is None
    assert read_stop(tmp_path / "no-such-run" / "STOP") is None
    (tmp_path / "dir").mkdir()
    assert read_stop(tmp_path / "dir") is None
    assert read_stop("bad\0path") is None
    big = tmp_path / "BIG"
    big.write_text(json.dumps({"reason": "x" * MAX_STOP_FILE_BYTES}))
    assert read_stop(big) is None


@given(st.binary(max_size=2000))
def test_read_stop_never_raises(content: bytes) -> None:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"stop-hypothesis-{os.getpid()}"
    try:
        path.write_bytes(content)
        result = read_stop(path)
        assert result is None or isinstance(result, dict)
    finally:
        path.unlink(missing_ok=True)


def test_without_a_process_group_distributed_is_plain(tmp_path: Path) -> None:
    path = tmp_path / "STOP"
    assert should_stop_distributed(path) is False
    write_stop_file(path, make_signal())
    assert should_stop_distributed(path) is True


# --- the poller -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_poller_reads_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "STOP"
    clock = FakeClock()
    poller = StopFilePoller(path, interval=10.0, clock=clock)
    reads: list[object] = []
    real_read = read_stop

    def counting_read(p: object, since: float | None = None) -> dict[str, Any] | None:
        reads.append(p)
        return real_read(p, since)  # type: ignore[arg-type]

    monkeypatch.setattr("monitor.stopping.trainer.read_stop", counting_read)

    assert poller() is False and len(reads) == 1  # the first call reads
    write_stop_file(path, make_signal())
    clock.now += 9.9
    assert [poller() for _ in range(100)] == [False] * 100 and len(reads) == 1
    clock.now += 0.1
    assert poller() is True and len(reads) == 2
    assert poller.stopped and poller.info is not None and poller.info["step"] == 40


def test_the_poller_remembers_a_stop_after_the_file_goes(tmp_path: Path) -> None:
    path = tmp_path / "STOP"
    poller = StopFilePoller(path, interval=0.0)
    write_stop_file(path, make_signal())
    assert poller() is True
    path.unlink()
    assert poller() is True and poller.info is not None


def test_the_poller_can_count_calls_instead_of_seconds(tmp_path: Path) -> None:
    path = tmp_path / "STOP"
    poller = StopFilePoller(path, every_n_calls=3)
    assert poller() is False  # call 1: reads
    write_stop_file(path, make_signal())
    assert poller() is False and poller() is False  # calls 2 and 3: no read
    assert poller() is True  # call 4: reads


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": -1.0}, "interval"),
        ({"every_n_calls": 0}, "every_n_calls"),
        ({"distributed": True}, "every_n_calls"),
    ],
    ids=["negative-interval", "zero-calls", "distributed-by-time"],
)
def test_the_poller_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StopFilePoller("STOP", **kwargs)


# --- importable without torch ----------------------------------------------------------------


@pytest.mark.parametrize("module", ["monitor.stopping.trainer", "monitor.trainer"])
def test_the_trainer_module_needs_no_torch(tmp_path: Path, module: str) -> None:
    (tmp_path / "STOP").write_text('{"reason": "manual"}')
    result = run_python(
        f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        import {module} as trainer
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       {{"torch", "numpy", "pydantic", "yaml", "prometheus_client", "watchdog"}}
                       and sys.modules[m] is not None)
        assert not heavy, heavy
        path = {str(tmp_path / "STOP")!r}
        assert trainer.should_stop(path) and trainer.should_stop_distributed(path)
        poller = trainer.StopFilePoller(path, every_n_calls=1, distributed=True)
        assert poller() and poller.info == {{"reason": "manual"}}
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("module", "blocked", "package"),
    [
        ("monitor.stopping.integrations.lightning", ["lightning", "pytorch_lightning"],
         "lightning"),
        ("monitor.stopping.integrations.huggingface", ["transformers"], "transformers"),
        ("monitor.integrations.lightning", ["lightning", "pytorch_lightning"], "lightning"),
        ("monitor.integrations.huggingface", ["transformers"], "transformers"),
    ],
    ids=["lightning", "huggingface", "old-path-lightning", "old-path-huggingface"],
)  # fmt: skip
def test_an_integration_without_its_library_says_what_to_install(
    module: str, blocked: list[str], package: str
) -> None:
    result = run_python(
        f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None
        import monitor.integrations, monitor.stopping.integrations  # these always import
        try:
            import {module}
        except ImportError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install {package}" in result.stdout


# --- a real training loop ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_trainer_stops_within_a_few_steps_of_the_stop_file(tmp_path: Path) -> None:
    stop_file = tmp_path / "run" / "STOP"
    trainer = subprocess.Popen(
        [sys.executable, str(HERE / "stop_trainer.py"), "--stop-file", str(stop_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert trainer.stdout is not None
        seen = 0
        for line in trainer.stdout:  # training is under way: a few steps done
            if line.startswith("step "):
                seen = int(line.split()[1])
            if seen >= 5:
                break
        assert seen >= 5, "the trainer never started"
        write_stop_file(stop_file, make_signal(step=seen))
        written = time.monotonic()
        rest, errors = trainer.communicate(timeout=60)
        took = time.monotonic() - written
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    assert trainer.returncode == 0, errors
    lines = rest.splitlines()
    steps_after = [line for line in lines if line.startswith("step ")]
    result = json.loads(lines[-1])
    assert len(steps_after) <= 8, f"{len(steps_after)} steps ran after the stop file appeared"
    assert result["stopped_at"] >= seen
    assert result["stop"]["rule"] == "within-decline" and result["stop"]["step"] == seen
    assert took < 30


@pytest.mark.slow
def test_ranks_agree_when_only_rank_zero_can_see_the_file(tmp_path: Path) -> None:
    """Two real gloo ranks (CPU); rank 1's path never exists. Both must get rank 0's answer."""
    stop = tmp_path / "STOP"
    write_stop_file(stop, make_signal())
    only_rank1 = tmp_path / "rank1" / "STOP"
    write_stop_file(only_rank1, make_signal())
    written_after_the_ranks_start(stop, only_rank1)
    missing = str(tmp_path / "missing")
    # case 1: only rank 0 sees a stop; case 2: nobody does; case 3: only rank 1 does (ignored:
    # rank 0 alone decides, so a rank-local file can never split the group).
    views = {0: [str(stop), missing, missing], 1: [missing, missing, str(only_rank1)]}
    init = tmp_path / "init"
    ranks = [
        subprocess.Popen(
            [sys.executable, str(HERE / "stop_dist_worker.py"), str(rank), "2", str(init)]
            + views[rank],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for process in ranks:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.wait()
    for rank, output in enumerate(outputs):
        assert output["rank"] == rank
        assert output["decisions"] == [True, False, False]
        assert output["polled"] == [True, True, True]
    assert outputs[0]["info"]["run"] == "run-a" and outputs[1]["info"] is None


# --- the framework callbacks (only where the framework is installed) ------------------------


@pytest.mark.slow
def test_lightning_stops_at_the_next_check(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    import torch

    from monitor.stopping.integrations.lightning import StiffnessStopCallback

    stop_file = tmp_path / "STOP"

    module_base: Any = pl.LightningModule
    callback_base: Any = pl.Callback

    class Tiny(module_base):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Monitor(callback_base):  # type: ignore[misc]
        """Stands in for the daemon: raises the stop after optimizer step 5."""

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == 5:
                write_stop_file(stop_file, make_signal(step=5))

    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    callback = StiffnessStopCallback(stop_file, check_every_n_steps=2)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1000,
        callbacks=[Monitor(), callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=4))
    assert callback.stopped_at_step == 6 and trainer.global_step == 6
    assert callback.stop_info is not None and callback.stop_info["step"] == 5


@pytest.mark.slow
def test_lightning_ddp_ranks_stop_together(tmp_path: Path) -> None:
    pytest.importorskip("lightning.pytorch")
    stop_file = tmp_path / "STOP"
    write_stop_file(stop_file, make_signal(step=0))
    written_after_the_ranks_start(stop_file)
    result = subprocess.run(
        [sys.executable, str(HERE / "stop_lightning_ddp.py"), str(stop_file), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    assert {r["stopped_at_step"] for r in reports} == {3}
    assert {r["global_step"] for r in reports} == {3}
    assert reports[0]["saw_file"] and not reports[1]["saw_file"]


@pytest.mark.slow
def test_huggingface_ddp_ranks_stop_together(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    stop_file = tmp_path / "STOP"
    write_stop_file(stop_file, make_signal(step=0))
    written_after_the_ranks_start(stop_file)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    result = subprocess.run(
        [*torchrun, str(HERE / "stop_hf_ddp.py"), str(stop_file), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["distributed"] and r["world_size"] == 2 for r in reports)
    assert {r["stopped_at_step"] for r in reports} == {3}
    assert {r["global_step"] for r in reports} == {3}
    assert reports[0]["saw_file"] and not reports[1]["saw_file"]


@pytest.mark.slow
def test_huggingface_trainer_stops_at_the_next_check(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import torch

    from monitor.stopping.integrations.huggingface import StiffnessStopCallback

    stop_file = tmp_path / "STOP"

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": torch.nn.functional.cross_entropy(self.layer(x), labels)}

    callback_base: Any = transformers.TrainerCallback

    class Monitor(callback_base):  # type: ignore[misc]
        """Stands in for the daemon: raises the stop after optimizer step 5."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 5:
                write_stop_file(stop_file, make_signal(step=5))

    data = [{"x": torch.randn(4), "labels": int(i % 2)} for i in range(64)]
    callback = StiffnessStopCallback(stop_file, check_every_n_steps=2)
    trainer = transformers.Trainer(
        model=Tiny(),
        args=transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=1000,
            per_device_train_batch_size=4,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=data,
        callbacks=[Monitor(), callback],
    )
    trainer.train()
    assert callback.stopped_at_step == 6 and trainer.state.global_step == 6
    assert callback.stop_info is not None and callback.stop_info["step"] == 5


# --- reruns: a stop file older than the trainer is an earlier run's ---------------------------


def test_a_stop_file_from_before_the_trainer_started_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "STOP"
    write_stop_file(path, make_signal())
    old = time.time() - 3600  # the previous run into this folder stopped an hour ago
    os.utime(path, (old, old))
    poller = StopFilePoller(path, interval=0.0)
    assert poller() is False and poller.info is None
    assert read_stop(path) is not None  # without ``since`` any stop file counts
    assert StopFilePoller(path, interval=0.0, since=None)() is True
    write_stop_file(path.with_name("STOP2"), make_signal())  # a fresh one counts at once
    assert StopFilePoller(path.with_name("STOP2"), interval=0.0)() is True


def test_since_allows_the_file_clock_its_margin(tmp_path: Path) -> None:
    path = tmp_path / "STOP"
    write_stop_file(path, make_signal())
    written = path.stat().st_mtime
    assert read_stop(path, since=written + STALE_MARGIN - 0.1) is not None
    assert read_stop(path, since=written + STALE_MARGIN + 0.1) is None
    assert should_stop(path, since=written) and not should_stop(path, since=written + 60)


def test_best_checkpoint_reads_the_daemons_file(tmp_path: Path) -> None:
    assert best_checkpoint(tmp_path) is None
    best = {"version": 1, "run": "a", "attempt": 2, "metric": "probe_loss", "mode": "min",
            "step": 30, "value": 0.25, "path": str(tmp_path / "step_30.pt")}  # fmt: skip
    (tmp_path / "best_checkpoint.json").write_text(json.dumps(best))
    assert best_checkpoint(tmp_path) == best
    (tmp_path / "elsewhere.json").write_text(json.dumps({**best, "path": None}))
    assert best_checkpoint(tmp_path, name="elsewhere.json") is None  # names no checkpoint
