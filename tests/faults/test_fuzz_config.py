"""The config loader, the rules loader and the trainer's stop-file reader, fuzzed (issue 19,
item 10).

Each case must either load or raise ``monitor.errors.ConfigError`` (``read_stop``: return
None or a dict, never raise), never another exception, within a time bound per case (an
interval timer interrupts a case that stalls) and a memory bound (the address space is capped
while the cases run, so an expansion fails with MemoryError instead of taking the machine).
Inputs are random text, YAML assembled from the tokens that matter (anchors, aliases, tags,
flow collections, the config's own keys and tricky values), valid configs with random edits,
and random structures shaped like the config's sections and the rule kinds. The cases are
the same in every run (``derandomize``); ``FUZZ_EXAMPLES`` raises their number for a hunt.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.config.schema import MonitorConfig, RunConfig, load_config, parse_config
from monitor.errors import ConfigError
from monitor.rules.spec import (
    RULE_KINDS,
    AllRule,
    AnyRule,
    DeclineRule,
    NonFiniteRule,
    RuleSet,
    SlopeRule,
    ThresholdRule,
    load_rules,
    parse_rules,
)
from monitor.stopping.trainer import read_stop

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
#: Seconds one case may take: real ones take milliseconds; generous for a loaded machine.
SECONDS = 10
#: Address space the cases may add to the test process.
MEMORY = 1 << 30

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the interval timer bounds each case; hypothesis would only report
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class TookTooLong(Exception):
    """Raised in a case by the interval timer: it passed ``SECONDS``."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise TookTooLong(f"a case took over {SECONDS} s")


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


@pytest.fixture
def bounded() -> Iterator[None]:
    """Cap this process's address space above what it uses now, and arm the case timer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + MEMORY
    resource.setrlimit(
        resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard)
    )
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def timed(call: Any, *args: Any) -> Any:
    signal.setitimer(signal.ITIMER_REAL, SECONDS)
    try:
        return call(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


# --- inputs ----------------------------------------------------------------------------------

SECTION_MODELS = {
    name: field.annotation
    for name, field in MonitorConfig.model_fields.items()
    if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")
}
RULE_MODELS = (DeclineRule, SlopeRule, ThresholdRule, NonFiniteRule, AllRule, AnyRule)
KEYS = sorted(
    {*MonitorConfig.model_fields}
    | {key for model in (*SECTION_MODELS.values(), RunConfig) for key in model.model_fields}
    | {key for kind in RULE_MODELS for key in kind.model_fields}
)
TRICKY = [
    "8GiB", "1e999", "-1", "0", "2024-13-45", "{run_dir}/STOP", "{run_dir:>999999999}", "{0}",
    "(", "step(\\d+)", "class", "pair", "auto", "cuda:0", "decline", "any", "all", "threshold",
    "class_within:3", "within_class", "model:build", "os:system", "/dev/zero", "~", "",
    "a\nb", "\x00", "é" * 3, "x" * 300,
]  # fmt: skip
TOKENS = [
    *KEYS, *TRICKY, "&a ", "*a", "&b ", "*b", "<<: ", "? ", ": ", ":", "- ", "-", "[", "]",
    "{", "}", ", ", "'", '"', "# ", "|\n", ">\n", "---\n", "...\n", "%YAML 1.1\n", "\n",
    "\n  ", "\n    ", "\t", " ", "null", "true", "1", "0.5", "!!int ", "!!float ", "!!binary ",
    "!!set ", "!!timestamp ", "!!str ", "!!map ", "!!seq ", "!!python/name:os.system ",
    "!custom ", "\\", "\ufeff", "\r\n", "\x85",
]  # fmt: skip
VALID = (
    "model: {factory: 'model:build', kwargs: {hidden: 8}}\n"
    "probe:\n  path: probe.pt\n  per_class: 10\n"
    "stiffness: {mode: class, batch_size: 16, memory_limit: 1GiB, include: ['fc.*']}\n"
    "checkpoint: {step_regex: 'step(\\d+)'}\n"
    "runs:\n  - &run {name: a, path: /ckpt/a, patterns: ['*.pt']}\n  - {<<: *run, name: b}\n"
    "rules:\n  - {kind: decline, metric: within_class, patience: 3}\n"
    "  - {kind: any, rules: [{kind: threshold, stopping_threshold: 0.9}]}\n"
    "stop: {file: '{run_dir}/STOP'}\nmetrics: {port: 0}\n"
)


def _edit(text: str, edits: list[tuple[float, int, str]]) -> str:
    """Replace ``length`` characters at each relative position with a token."""
    for where, length, token in edits:
        at = int(where * len(text))
        text = text[:at] + token + text[at + length :]
    return text


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
    st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 12), st.sampled_from(TOKENS)),
        min_size=1,
        max_size=6,
    ).map(lambda edits: _edit(VALID, edits)),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(TRICKY),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(), inner, max_size=4
        )
    ),
    max_leaves=16,
)


def _section(model: Any) -> st.SearchStrategy[dict[Any, Any]]:
    return st.dictionaries(
        st.sampled_from(sorted(model.model_fields)) | st.text(max_size=6), VALUES, max_size=5
    )


CONFIGS = st.one_of(
    VALUES,
    st.fixed_dictionaries(
        {"probe": st.just({"path": "probe.pt"}) | _section(SECTION_MODELS["probe"])},
        optional={
            **{name: _section(model) for name, model in SECTION_MODELS.items() if name != "probe"},
            "runs": st.lists(_section(RunConfig), max_size=3),
            "rules": VALUES,
        },
    ),
)
RULE_FIELDS = sorted({key for kind in RULE_MODELS for key in kind.model_fields} - {"kind", "rules"})
RULES = st.recursive(
    st.fixed_dictionaries(
        {"kind": st.sampled_from(RULE_KINDS) | SCALARS},
        optional={key: VALUES | st.sampled_from(TRICKY) for key in RULE_FIELDS},
    ),
    lambda inner: st.fixed_dictionaries(
        {"kind": st.sampled_from(["any", "all"]), "rules": st.lists(inner, max_size=3)}
    ),
    max_leaves=6,
)
BILLION_LAUGHS = "".join(
    [f"a0: &a0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)]
)


def indented(text: str) -> str:
    return "".join(f"  {line}" for line in text.splitlines(keepends=True))


# --- properties ------------------------------------------------------------------------------


@FUZZ
@given(text=YAML_TEXT)
@example(text="stiffness:\n  batch_size:\n" + indented(indented(BILLION_LAUGHS)))
@example(text="[" * 100_000)
@example(text="probe: {path: p}\nstiffness: {memory_limit: 1e999}\n")
@example(text="when: 2024-13-45\n")
def test_config_text_loads_or_raises_config_error(tmp_path: Path, bounded: None, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(timed(load_config, path), MonitorConfig)
    except ConfigError as error:
        assert error.problems and all(str(path) in line for line in error.problems), error.problems


@FUZZ
@given(data=CONFIGS, text=st.none() | YAML_TEXT)
def test_config_structures_parse_or_raise_config_error(
    tmp_path: Path, bounded: None, data: Any, text: str | None
) -> None:
    source = tmp_path / "config.yaml"
    try:
        assert isinstance(timed(parse_config, data, source, text), MonitorConfig)
    except ConfigError as error:
        assert error.problems and all(str(source) in line for line in error.problems)
        assert all(len(line) < 2000 for line in error.problems), error.problems


@FUZZ
@given(rules=st.lists(RULES, max_size=4) | VALUES, text=st.none() | YAML_TEXT)
def test_rule_structures_load_or_raise_config_error(
    tmp_path: Path, bounded: None, rules: Any, text: str | None
) -> None:
    source = tmp_path / "config.yaml"
    try:
        if isinstance(rules, list):
            assert isinstance(timed(load_rules, rules, source, text), RuleSet)
        else:
            assert isinstance(timed(parse_rules, rules, source, text), RuleSet)
    except ConfigError as error:
        assert error.problems and all(str(source) in line for line in error.problems)


@FUZZ
@given(text=YAML_TEXT)
@example(text="description:\n" + indented(BILLION_LAUGHS) + "rules: [{kind: any}]\n")
def test_rule_files_load_or_raise_config_error(tmp_path: Path, bounded: None, text: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(timed(load_rules, path, tmp_path / "config.yaml"), RuleSet)
    except ConfigError as error:
        assert error.problems and all(str(path) in line for line in error.problems)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
STOP_BYTES = st.one_of(
    st.binary(max_size=512),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.tuples(JSON, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1"])).map(
        lambda pair: json.dumps(pair[0], ensure_ascii=False).encode(pair[1], errors="replace")
    ),
)


@FUZZ
@given(raw=STOP_BYTES)
@example(raw=b"[" * 100_000)
@example(raw=b'{"step": ' + b"9" * 10_000 + b"}")
@example(raw=b'{"reason": "manual"' + b" " * (1 << 20) + b"}")
@example(raw=b'{"reason": NaN, "at": Infinity}')
@example(raw=b"\xff\xfe{\x00}\x00")
def test_stop_files_read_as_none_or_a_dict(tmp_path: Path, bounded: None, raw: bytes) -> None:
    path = tmp_path / "STOP"
    path.write_bytes(raw)
    started = time.monotonic()
    info = timed(read_stop, path)
    assert info is None or isinstance(info, dict)
    assert time.monotonic() - started < SECONDS


def test_the_config_that_edits_start_from_loads(tmp_path: Path) -> None:
    """The edited configs start valid, so the edits reach the validators, not just the parser."""
    path = tmp_path / "config.yaml"
    path.write_text(VALID)
    config = load_config(path)
    assert [run.name for run in config.runs] == ["a", "b"] and config.runs[1].patterns == ["*.pt"]
    assert isinstance(config.rules, list) and len(config.rules) == 2
