"""Checkpoint loading against real files written by the real libraries (tests/checkpoint_writers).

Every format round-trips: the weights that come back equal the ones saved, and the step is
found where the format keeps it. Every bad input is a ``CheckpointError`` with the right
reason token and a message naming the path.
"""

from __future__ import annotations

import argparse
import collections
import copy
import functools
import io
import pickle
import pickletools
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from monitor.checkpoints.loading import _align, load_model, load_weights
from monitor.checkpoints.pickles import pickle_globals
from monitor.checkpoints.reader import detect_format, read_checkpoint, step_from_name
from monitor.config.schema import CheckpointConfig, parse_config
from monitor.errors import CheckpointError, EngineError
from monitor.evaluation.evaluator import Evaluator
from monitor.probe.sampling import ProbeWarning
from monitor.stiffness import compute_stiffness
from tests import checkpoint_writers as writers
from tests.checkpoint_writers import Hyperparameters, Net, trained_net

Writer = Callable[[Path, Net], Path]
GENERATOR = torch.Generator().manual_seed(1)
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*torch.jit.*deprecated:DeprecationWarning",  # the TorchScript writer
    "ignore:torch.distributed is disabled:UserWarning",  # dcp.save in one process
)


@pytest.fixture(scope="module")
def net() -> Net:
    return trained_net()


def config(**overrides: Any) -> CheckpointConfig:
    return CheckpointConfig(**overrides)


def assert_same_state(model: nn.Module, expected: nn.Module) -> None:
    got, want = model.state_dict(), expected.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def error_of(call: Callable[[], object]) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        call()
    return info.value


# --- every format, round trip ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    writer: Writer
    format: str
    step: int | None
    step_source: str
    epoch: int | None = None


WEIGHT_CASES = {
    "raw-state-dict": Case(writers.write_raw, "state_dict", None, "none"),
    "legacy-serialization": Case(writers.write_legacy, "state_dict", None, "none"),
    "model_state_dict+global_step": Case(
        writers.write_model_state_dict, "state_dict", 250, "payload", epoch=2
    ),
    "state_dict+epoch-only": Case(writers.write_state_dict_epoch, "state_dict", 4, "payload", 4),
    "raw+step-beside": Case(writers.write_step_inside_raw, "state_dict", 17, "payload"),
    "nested-dicts+tensor-step": Case(writers.write_nested, "state_dict", 9, "payload"),
    "ddp-module-prefix": Case(writers.write_ddp, "state_dict", 33, "payload"),
    "compile-orig_mod-prefix": Case(writers.write_compiled, "state_dict", None, "none"),
    "ddp+compile-prefix": Case(writers.write_ddp_compiled, "state_dict", None, "none"),
    "lightning": Case(writers.write_lightning, "lightning", 120, "payload", epoch=3),
    "safetensors+metadata-step": Case(writers.write_safetensors, "safetensors", 7, "payload"),
    "hf-safetensors": Case(writers.write_hf_safetensors, "hf", 300, "payload"),
    "hf-sharded-safetensors": Case(writers.write_hf_sharded_safetensors, "hf", 400, "payload"),
    "hf-pytorch_model.bin": Case(writers.write_hf_bin, "hf", None, "none"),
    "hf-sharded-bin": Case(writers.write_hf_sharded_bin, "hf", 500, "payload"),
    "dcp-nested+step": Case(writers.write_dcp, "dcp", 5, "payload"),
    "dcp-flat+step-in-name": Case(writers.write_dcp_flat, "dcp", 60, "filename"),
}


@pytest.mark.parametrize("case", WEIGHT_CASES.values(), ids=WEIGHT_CASES.keys())
def test_weight_formats_round_trip(case: Case, net: Net, tmp_path: Path) -> None:
    path = case.writer(tmp_path, net)
    assert detect_format(path) == case.format
    loaded = read_checkpoint(path, config())
    assert (loaded.format, loaded.step, loaded.step_source) == (
        case.format,
        case.step,
        case.step_source,
    )
    assert loaded.epoch == case.epoch
    assert loaded.module is None and loaded.state_dict is not None
    model = load_weights(Net(), loaded)
    assert_same_state(model, net)


@pytest.mark.parametrize("fmt", ["auto", "state_dict", "lightning"])
def test_configured_format_is_reported_as_configured(fmt: str, net: Net, tmp_path: Path) -> None:
    loaded = read_checkpoint(writers.write_lightning(tmp_path, net), config(format=fmt))
    assert loaded.format == ("lightning" if fmt == "auto" else fmt)
    assert_same_state(load_weights(Net(), loaded), net)


def test_lightning_sibling_modules_are_ignored(net: Net, tmp_path: Path) -> None:
    """A LightningModule's loss or metric buffers sit beside ``model.``: not the model's."""
    checkpoint = writers.lightning_checkpoint(net, epoch=0, global_step=10, folder=tmp_path)
    checkpoint["state_dict"]["loss_fn.weight"] = torch.ones(3)
    path = tmp_path / "epoch=0-step=10.ckpt"
    torch.save(checkpoint, path)
    assert_same_state(load_weights(Net(), read_checkpoint(path, config())), net)


def test_state_dict_key_picks_the_configured_weights(net: Net, tmp_path: Path) -> None:
    path = tmp_path / "ema.pt"
    torch.save({"model": trained_net(5).state_dict(), "ema": {"shadow": net.state_dict()}}, path)
    loaded = read_checkpoint(path, config(state_dict_key="ema.shadow"))
    assert_same_state(load_weights(Net(), loaded), net)
    default = read_checkpoint(path, config())
    assert_same_state(load_weights(Net(), default), trained_net(5))


def test_prefix_is_added_for_a_wrapped_model(net: Net, tmp_path: Path) -> None:
    loaded = read_checkpoint(writers.write_raw(tmp_path, net), config())
    wrapped = load_weights(writers.Wrapped(), loaded)
    assert_same_state(wrapped.net, net)


NAMES = st.lists(
    st.lists(
        st.sampled_from(["a", "b", "c", "0", "1", "weight", "bias"]), min_size=1, max_size=4
    ).map(".".join),
    min_size=1,
    max_size=12,
    unique=True,
)
PREFIXES = st.sampled_from(["module.", "_orig_mod.", "model.", "module._orig_mod.", "x.net."])


@given(keys=NAMES, prefix=PREFIXES, strip=st.booleans())
def test_alignment_undoes_any_wrapper_prefix(keys: list[str], prefix: str, strip: bool) -> None:
    """Checkpoint keys wrapped in a prefix (or the model's) line up exactly, nothing left."""
    checkpoint = [prefix + key for key in keys] if strip else keys
    model = set(keys) if strip else {prefix + key for key in keys}
    alignment = _align(checkpoint, model)
    assert set(alignment.mapping.values()) == model and not alignment.unexpected


def test_tied_weights_saved_once_are_not_missing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = writers.Tied()
    path = tmp_path / "tied.safetensors"
    save_file({"embed.weight": model.embed.weight.detach()}, path)
    fresh = load_weights(writers.Tied(), read_checkpoint(path, config()))
    assert torch.equal(fresh.lm_head.weight, model.embed.weight)


def test_dcp_reads_only_the_model_part(net: Net, tmp_path: Path) -> None:
    loaded = read_checkpoint(writers.write_dcp(tmp_path, net), config())
    assert loaded.state_dict is not None
    assert set(loaded.state_dict) == set(net.state_dict())  # no optimizer tensors


def test_dcp_state_under_other_keys(net: Net, tmp_path: Path) -> None:
    """A step beside a differently named model part: the prefix is found, or configured."""
    path = tmp_path / "dcp-other"
    dcp.save({"trainer": {"net": net.state_dict()}, "global_step": 11}, checkpoint_id=path)
    for overrides in ({}, {"state_dict_key": "trainer.net"}):
        loaded = read_checkpoint(path, config(**overrides))
        assert (loaded.step, loaded.step_source) == (11, "payload")
        assert_same_state(load_weights(Net(), loaded), net)


def test_index_files_name_their_folder(net: Net, tmp_path: Path) -> None:
    dcp_folder = writers.write_dcp(tmp_path, net)
    assert read_checkpoint(dcp_folder / ".metadata", config()).path == dcp_folder
    hf_folder = writers.write_hf_sharded_safetensors(tmp_path, net)
    index = hf_folder / "model.safetensors.index.json"
    assert read_checkpoint(index, config()).path == hf_folder


# --- self-describing formats ----------------------------------------------------------------


def test_torchscript_needs_no_factory(net: Net, tmp_path: Path) -> None:
    path = writers.write_torchscript(tmp_path, net)
    assert detect_format(path) == "torchscript"
    model, loaded = load_model(path, config(), build_model=None)
    assert (loaded.format, loaded.step, loaded.step_source) == ("torchscript", 40, "payload")
    x = torch.randn(5, 4)
    assert torch.allclose(model.eval()(x), net(x))


def test_export_needs_no_factory_and_runs_in_eval_mode(net: Net, tmp_path: Path) -> None:
    path = writers.write_export(tmp_path, net)
    assert detect_format(path) == "export"
    model, loaded = load_model(path, config(), build_model=None)
    assert (loaded.format, loaded.step, loaded.step_source) == ("export", 80, "payload")
    model.eval()  # ExportedProgram.module() raises here; the engine calls it
    x = torch.randn(7, 4)
    assert torch.allclose(model(x), net(x), atol=1e-6)
    weights = load_weights(Net(), loaded)  # its weights can also fill a factory's model
    assert_same_state(weights, net)


def test_export_made_in_train_mode_is_evaluated_in_eval_mode(net: Net, tmp_path: Path) -> None:
    path = writers.write_export_in_train_mode(tmp_path, net)
    loaded = read_checkpoint(path, config())
    assert loaded.module is not None
    x = torch.randn(4, 4)
    counter = loaded.module.get_buffer("body.1.num_batches_tracked")
    before = int(counter)
    first, second = loaded.module(x), loaded.module(x)
    assert torch.allclose(first, net.eval()(x), atol=1e-6)  # running stats, no dropout
    assert torch.equal(first, second)
    assert int(counter) == before  # eval mode counts no batches


SELF_DESCRIBING: dict[str, tuple[Writer, str, int | None]] = {
    "torchscript": (writers.write_torchscript, "torchscript", 40),
    "export": (writers.write_export, "export", 80),
    "export-made-in-train-mode": (
        functools.partial(writers.write_export_in_train_mode, dynamic=True),
        "export",
        None,
    ),
}


@pytest.mark.parametrize("mode", ["class", "pair"])
@pytest.mark.parametrize("name", list(SELF_DESCRIBING))
def test_self_describing_checkpoint_evaluated_end_to_end(
    name: str, mode: str, net: Net, tmp_path: Path
) -> None:
    """No model.factory: the Evaluator takes the module from the file, and the engine (the
    loop backend for TorchScript, vmap for export) measures what the eager net gives."""
    writer, fmt, step = SELF_DESCRIBING[name]
    path = writer(tmp_path, net)
    inputs = torch.randn(36, 4, generator=GENERATOR)
    torch.save({"inputs": inputs, "targets": torch.arange(36) % 3}, tmp_path / "probe.pt")
    monitor_config = parse_config(
        {
            "probe": {"path": "probe.pt", "per_class": 12},
            "stiffness": {"device": "cpu", "mode": mode, "batch_size": 5},
        },
        source=tmp_path / "config.yaml",
    )
    assert monitor_config.model.factory is None
    evaluator = Evaluator(monitor_config)
    evaluation = evaluator.evaluate(path, run="run-a")
    assert (evaluation.format, evaluation.step) == (fmt, step)
    result = evaluation.result
    eager = compute_stiffness(copy.deepcopy(net), evaluator.probe, evaluator.options)
    assert result.counts == eager.counts and result.counts.examples == 36
    matrices = [(result.cosine, eager.cosine), (result.sign, eager.sign)]
    for got, want in matrices:
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert got.pair_counts == want.pair_counts
            for a, b in zip(got.matrix, want.matrix, strict=True):
                assert a == pytest.approx(b, abs=1e-6)
    assert result.probe_loss == pytest.approx(eager.probe_loss, abs=1e-6)
    assert evaluation.to_dict()["checkpoint"] == str(path)


def test_export_with_a_fixed_batch_size_is_an_engine_error(net: Net, tmp_path: Path) -> None:
    path = writers.write_export_in_train_mode(tmp_path, net)  # exported for batches of 4
    torch.save({"inputs": torch.randn(6, 4), "targets": torch.arange(6) % 3}, tmp_path / "p.pt")
    monitor_config = parse_config(
        {"probe": {"path": "p.pt", "per_class": 2}, "stiffness": {"device": "cpu"}},
        source=tmp_path / "config.yaml",
    )
    with pytest.warns(ProbeWarning):
        evaluator = Evaluator(monitor_config)
    with pytest.raises(EngineError, match=r"Guard failed.*dynamic batch dimension"):
        evaluator.evaluate(path)


def test_load_model_builds_weight_formats(net: Net, tmp_path: Path) -> None:
    model, loaded = load_model(writers.write_lightning(tmp_path, net), config(), Net)
    assert loaded.format == "lightning"
    assert_same_state(model, net)


def test_weight_format_without_factory(net: Net, tmp_path: Path) -> None:
    path = writers.write_raw(tmp_path, net)
    error = error_of(lambda: load_model(path, config(), build_model=None))
    assert error.reason == "format"
    assert str(path) in str(error) and "model.factory" in str(error)


# --- the step ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "regex", "step"),
    [
        ("ckpt-step_500.pt", r"step[_=-]?(\d+)", 500),
        ("step=42.ckpt", r"step[_=-]?(\d+)", 42),
        ("epoch=3-step=120.ckpt", r"step[_=-]?(\d+)", 120),
        ("step1000.safetensors", r"step[_=-]?(\d+)", 1000),
        ("run-step_3-step_7.pt", r"step[_=-]?(\d+)", 7),
        ("model_iter900.pt", r"iter(\d+)", 900),
        ("checkpoint-1500", r"checkpoint-(\d+)", 1500),
        ("model.pt", r"step[_=-]?(\d+)", None),
        ("stepping.pt", r"step[_=-]?(\d+)", None),
    ],
    ids=lambda value: str(value),
)
def test_step_from_name(name: str, regex: str, step: int | None) -> None:
    assert step_from_name(Path("/runs/a") / name, regex) == step


def test_step_from_file_name_when_payload_has_none(net: Net, tmp_path: Path) -> None:
    path = tmp_path / "ckpt-step_500.pt"
    torch.save(net.state_dict(), path)
    loaded = read_checkpoint(path, config())
    assert (loaded.step, loaded.step_source) == (500, "filename")
    custom = read_checkpoint(path, config(step_regex=r"ckpt-\w+?_(\d+)"))
    assert (custom.step, custom.step_source) == (500, "filename")


def test_payload_step_wins_over_the_name(net: Net, tmp_path: Path) -> None:
    path = tmp_path / "step=42.ckpt"
    torch.save({"state_dict": net.state_dict(), "global_step": 41, "step": 3}, path)
    loaded = read_checkpoint(path, config())
    assert (loaded.step, loaded.step_source, loaded.format) == (41, "payload", "lightning")


# --- bad inputs ---------------------------------------------------------------------------


def test_missing_file_and_folder(tmp_path: Path) -> None:
    for path in (tmp_path / "nope.pt", tmp_path / "nope-folder"):
        error = error_of(lambda path=path: read_checkpoint(path, config()))
        assert error.reason == "missing" and str(path) in str(error)


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    cut = path.with_name("truncated-" + path.name)
    cut.write_bytes(data[: len(data) // 2])
    return cut


CORRUPT_WRITERS: dict[str, Writer] = {
    "torch.save": writers.write_raw,
    "lightning": writers.write_lightning,
    "legacy": writers.write_legacy,
    "safetensors": writers.write_safetensors,
    "torchscript": writers.write_torchscript,
    "export": writers.write_export,
}


@pytest.mark.parametrize("writer", CORRUPT_WRITERS.values(), ids=CORRUPT_WRITERS.keys())
def test_truncated_copy_is_corrupt(writer: Writer, net: Net, tmp_path: Path) -> None:
    path = _truncated(writer(tmp_path, net))
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "corrupt" and str(path) in str(error)
    assert "Traceback" not in str(error) and len(str(error)) < 400


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("garbage.pt", bytes(range(256)) * 12),
        (
            "random.pt",
            bytes(torch.randint(0, 256, (4096,), generator=GENERATOR).tolist()),
        ),
        ("empty.pt", b""),
        ("text.ckpt", b"this is not a checkpoint\n" * 20),
        ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + b"x" * 64),
        ("garbage.pt2", b"PK\x03\x04 not really a zip"),
    ],
    ids=["byte-ramp", "random-bytes", "empty", "text", "bad-safetensors-header", "bad-zip"],
)
def test_garbage_is_corrupt(name: str, data: bytes, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "corrupt" and str(path) in str(error)


def _damage_central_directory(data: bytes, patch: Callable[[bytearray, int], None]) -> bytes:
    """``patch(data, start)`` applied to every central-directory header of a zip archive."""
    damaged = bytearray(data)
    start = damaged.find(b"PK\x01\x02")
    while start != -1:
        patch(damaged, start)
        start = damaged.find(b"PK\x01\x02", start + 4)
    return bytes(damaged)


def _bad_utf8_name(data: bytearray, start: int) -> None:
    data[start + 8] |= 0x08  # general-purpose flag bit 11: "the name is UTF-8"
    data[start + 46] = 0xFF  # the name's first byte, which no UTF-8 starts with


def _future_version(data: bytearray, start: int) -> None:
    data[start + 6] = 64  # "version needed to extract": 6.4, beyond what zipfile reads


@pytest.mark.parametrize("patch", [_bad_utf8_name, _future_version], ids=["utf8-name", "zip-6.4"])
@pytest.mark.parametrize(
    "writer", [writers.write_raw, writers.write_torchscript, writers.write_export]
)
def test_zip_archives_python_cannot_read_are_corrupt(
    writer: Writer, patch: Callable[[bytearray, int], None], net: Net, tmp_path: Path
) -> None:
    """Found by fuzzing: zipfile raised UnicodeDecodeError or NotImplementedError from
    detecting the format (and torch.jit.load UnicodeDecodeError), not a CheckpointError."""
    path = writer(tmp_path, net)
    path.write_bytes(_damage_central_directory(path.read_bytes(), patch))
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "corrupt" and str(path) in str(error)


def test_legacy_file_naming_a_storage_it_lacks_is_corrupt(net: Net, tmp_path: Path) -> None:
    """Found by fuzzing: torch's legacy loader asserts that every storage key it reads was
    named by the objects (AssertionError, not a CheckpointError)."""
    data = writers.write_legacy(tmp_path, net).read_bytes()
    stream = io.BytesIO(data)
    for _ in range(4):  # magic number, protocol, system info, the objects: skipped
        collections.deque(pickletools.genops(stream), maxlen=0)
    start = stream.tell()
    keys = pickle.load(stream)  # then the storage keys, then the storages' bytes
    renamed = pickle.dumps(["not-a-storage", *keys[1:]], protocol=2)
    path = tmp_path / "renamed.pth"
    path.write_bytes(data[:start] + renamed + data[stream.tell() :])
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "corrupt" and str(path) in str(error)


def test_export_whose_graph_fails_its_own_checks_is_corrupt(net: Net, tmp_path: Path) -> None:
    """Found by fuzzing: one flipped bit renamed an input (``p_head_bias`` -> ``q_head_bias``)
    and torch.export's verifier raised SpecViolationError, not a CheckpointError."""
    path = writers.write_export(tmp_path, net)
    damaged = tmp_path / "damaged.pt2"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(damaged, "w") as archive:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("models/model.json"):  # the input spec names it last
                head, name, tail = data.rpartition(b'"p_head_bias"')
                data = head + name.replace(b"p_", b"q_") + tail
            archive.writestr(info, data)
    error = error_of(lambda: read_checkpoint(damaged, config()))
    assert error.reason == "corrupt" and str(damaged) in str(error)


def test_torchscript_step_file_that_is_not_text(net: Net, tmp_path: Path) -> None:
    """Found by fuzzing: ``extra/step`` holding bytes that are not UTF-8 raised
    UnicodeDecodeError; the step then comes from nowhere, and the module still loads."""
    path = writers.write_torchscript(tmp_path, net)
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(damaged, "w") as archive:
        for info in source.infolist():
            data = source.read(info)
            archive.writestr(info, b"\xbc0" if info.filename.endswith("extra/step") else data)
    loaded = read_checkpoint(damaged, config())
    assert loaded.module is not None and loaded.step is None


def test_truncated_shard_in_hf_folder(net: Net, tmp_path: Path) -> None:
    path = writers.write_hf_sharded_safetensors(tmp_path, net)
    shard = path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "corrupt" and shard.name in str(error) and str(path) in str(error)


def test_missing_shard_in_hf_folder(net: Net, tmp_path: Path) -> None:
    path = writers.write_hf_sharded_bin(tmp_path, net)
    (path / "pytorch_model-00001-of-00002.bin").unlink()
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "corrupt" and "pytorch_model-00001-of-00002.bin" in str(error)
    assert "pytorch_model.bin.index.json" in str(error) and "incomplete" in str(error)


PICKLES: dict[str, tuple[Callable[[Net], object], str]] = {
    "argparse-namespace": (
        lambda net: {"model": net.state_dict(), "args": argparse.Namespace(lr=0.1)},
        "argparse.Namespace",
    ),
    "custom-class": (
        lambda net: {"state_dict": net.state_dict(), "hparams": Hyperparameters(0.1)},
        "tests.checkpoint_writers.Hyperparameters",
    ),
    "whole-module": (lambda net: net, "tests.checkpoint_writers.Net"),
    "module-under-model-key": (lambda net: {"model": net, "step": 3}, "checkpoint_writers.Net"),
}


@pytest.mark.parametrize(("make", "refused"), PICKLES.values(), ids=PICKLES.keys())
def test_pickles_need_allow_pickle(
    make: Callable[[Net], object], refused: str, net: Net, tmp_path: Path
) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(make(net), path)
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "pickle" and str(path) in str(error)
    assert refused in str(error) and "checkpoint.allow_pickle: true" in str(error)
    trusted = read_checkpoint(path, config(allow_pickle=True))
    assert_same_state(load_weights(Net(), trusted), net)


def test_export_archive_with_a_pickled_object_needs_allow_pickle(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/archive_format", "pt2")
        archive.writestr("evil/data/constants/obj", pickle.dumps(argparse.Namespace(a=1)))
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "pickle" and "argparse.Namespace" in str(error)


def test_export_archive_with_a_pickled_torch_save_member(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"hparams": Hyperparameters(1.0)}, buffer)
    path = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/archive_format", "pt2")
        archive.writestr("evil/data/sample_inputs/model.pt", buffer.getvalue())
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "pickle" and "Hyperparameters" in str(error)
    assert "evil/data/sample_inputs/model.pt" in str(error)


def test_pickle_globals_only_for_complete_pickles() -> None:
    assert pickle_globals(pickle.dumps(argparse.Namespace())) == ["argparse.Namespace"]
    assert pickle_globals(pickle.dumps({"a": 1})) == []
    assert pickle_globals(b"\x80\x02" + bytes(range(64))) is None


def test_dcp_metadata_with_a_foreign_global_is_refused(net: Net, tmp_path: Path) -> None:
    path = writers.write_dcp(tmp_path, net)
    (path / ".metadata").write_bytes(pickle.dumps(argparse.Namespace(x=1)))
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "pickle" and "argparse.Namespace" in str(error)


def test_dcp_without_metadata_is_incomplete(net: Net, tmp_path: Path) -> None:
    path = writers.write_dcp(tmp_path, net)
    (path / ".metadata").unlink()
    assert detect_format(path) == "dcp"
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "corrupt" and "incomplete" in str(error) and str(path) in str(error)


def test_dcp_with_a_missing_data_file(net: Net, tmp_path: Path) -> None:
    path = writers.write_dcp(tmp_path, net)
    for shard in path.glob("*.distcp"):
        shard.unlink()
    error = error_of(lambda: read_checkpoint(path, config()))
    assert error.reason == "corrupt" and str(path) in str(error)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.fc = nn.Linear(4, 3)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "not-strict"])
def test_wrong_architecture_lists_keys(strict: bool, tmp_path: Path) -> None:
    path = tmp_path / "convnet.pt"
    torch.save(ConvNet().state_dict(), path)
    loaded = read_checkpoint(path, config())
    error = error_of(lambda: load_weights(Net(), loaded, strict=strict))
    message = str(error)
    assert error.reason == "mismatch" and str(path) in message
    assert "no checkpoint key matches the model" in message
    if strict:
        assert "8 missing keys: body.0.bias, body.0.weight, body.1.bias, " in message
        assert ", ...; 4 unexpected: conv.bias, conv.weight, fc.bias, fc.weight" in message


def test_partly_matching_architecture(net: Net, tmp_path: Path) -> None:
    """Another model whose first layer fits ``body.0``: the best prefix still leaves most
    keys missing, and the message says which prefix it tried."""
    path = tmp_path / "other.pt"
    torch.save(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict(), path)
    error = error_of(lambda: load_weights(Net(), read_checkpoint(path, config())))
    assert error.reason == "mismatch" and "after adding 'body.'" in str(error)
    assert "6 missing keys" in str(error) and "2 unexpected: 2.bias, 2.weight" in str(error)


def test_extra_and_missing_keys(net: Net, tmp_path: Path) -> None:
    state = dict(net.state_dict())
    del state["head.weight"], state["head.bias"]
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    loaded = read_checkpoint(path, config())
    error = error_of(lambda: load_weights(Net(), loaded))
    assert error.reason == "mismatch"
    assert "2 missing keys: head.bias, head.weight; 1 unexpected: extra.weight" in str(error)
    assert "checkpoint.strict: false" in str(error)
    model = load_weights(Net(), loaded, strict=False)
    assert torch.equal(model.body[0].weight, net.body[0].weight)


def test_old_batchnorm_checkpoint_without_counter_loads_strictly(net: Net, tmp_path: Path) -> None:
    """Before PyTorch 0.4.1 BatchNorm had no num_batches_tracked; torch's own strict load
    accepts its absence, and so does ours."""
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in net.state_dict().items() if "num_batches" not in k}, path)
    model = load_weights(Net(), read_checkpoint(path, config()))
    assert torch.equal(model.body[1].running_var, net.body[1].running_var)


def test_shape_mismatch_is_an_error_even_when_not_strict(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    torch.save(Net(hidden=16).state_dict(), path)
    loaded = read_checkpoint(path, config())
    for strict in (True, False):
        error = error_of(lambda strict=strict: load_weights(Net(), loaded, strict=strict))
        assert error.reason == "mismatch" and "shape mismatches" in str(error)
        assert "body.0.weight (checkpoint [16, 4], model [8, 4])" in str(error)


def test_load_model_honours_strict_false(net: Net, tmp_path: Path) -> None:
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("head.")}
    path = tmp_path / "body-only.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError):
        load_model(path, config(), Net)
    model, _ = load_model(path, config(strict=False), Net)
    assert torch.equal(model.body[1].running_mean, net.body[1].running_mean)


@pytest.mark.parametrize(
    ("payload", "overrides", "expected"),
    [
        ([1, 2, 3], {}, "expected a dict of tensors, got a list"),
        ({"epoch": 3, "note": "no weights"}, {}, "no state dict found"),
        ({"model": {"w": torch.ones(1)}}, {"state_dict_key": "ema"}, "state_dict_key 'ema'"),
    ],
    ids=["list-payload", "no-tensors", "missing-state-dict-key"],
)
def test_no_state_dict_is_a_format_error(
    payload: object, overrides: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    error = error_of(lambda: read_checkpoint(path, config(**overrides)))
    assert error.reason == "format" and expected in str(error) and str(path) in str(error)


def test_unknown_folder_and_wrong_configured_format(net: Net, tmp_path: Path) -> None:
    folder = tmp_path / "just-a-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    error = error_of(lambda: read_checkpoint(folder, config()))
    assert error.reason == "format" and str(folder) in str(error)
    file = writers.write_raw(tmp_path, net)
    error = error_of(lambda: read_checkpoint(file, config(format="dcp")))
    assert error.reason == "format" and "folder" in str(error)


def test_copied_checkpoint_folder_keeps_working(net: Net, tmp_path: Path) -> None:
    """DCP metadata records the folder it was written to; a moved folder must still load."""
    original = writers.write_dcp(tmp_path, net)
    moved = tmp_path / "moved" / "step_9"
    shutil.copytree(original, moved)
    shutil.rmtree(original)
    loaded = read_checkpoint(moved, config())
    assert loaded.step == 5
    assert_same_state(load_weights(Net(), loaded), net)
