"""What the report tests share: a real daemon's store of six real checkpoints (pair mode), the
config that made it, and readers of the page's structure."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.daemon_harness import DaemonProcess, stored_evaluations, wait_for

EPOCHS = 6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RULES = [
    # A combinator that must fire early, so the report has a stop and a reason list to show.
    {
        "name": "good-enough",
        "kind": "all",
        "rules": [
            {"kind": "threshold", "metric": "probe_accuracy", "stopping_threshold": 0.3},
            {"kind": "threshold", "metric": "within_class", "stopping_threshold": -1.0},
        ],
    },
    # Reads a metric these runs never have (stiffness stays positive): no panel, a note.
    {
        "name": "length-gone",
        "kind": "threshold",
        "metric": "critical_length",
        "mode": "min",
        "stopping_threshold": 0.0,
    },
]


def report_config(folder: Path, mode: str, store: str = "state/state.db") -> Path:
    config = {
        "model": {"factory": "monitor.demo.trainer:build_mlp"},
        "probe": {
            "factory": "monitor.demo.trainer:probe",
            "kwargs": {"noise": 0.4},
            "per_class": 10,
        },
        "stiffness": {"mode": mode, "device": "cpu"},
        "runs": [{"name": "digits", "path": "checkpoints"}],
        "watch": {"settle_seconds": 0.2, "poll_interval": 0.2},
        "rules": RULES,
        "metrics": {"port": 0},
        "store": {"path": store},
    }
    path = folder / f"config-{mode}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def pair_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six epochs of the demo trainer, evaluated by a real daemon in pair mode: its config."""
    folder = tmp_path_factory.mktemp("report-run")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor.demo.trainer",
            "--out",
            str(folder / "checkpoints"),
            "--epochs",
            str(EPOCHS),
            "--noise",
            "0.4",
            "--stop-file",
            str(folder / "unused"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    config = report_config(folder, "pair")
    daemon = DaemonProcess(config)
    try:
        wait_for(lambda: len(stored_evaluations(config)) == EPOCHS, 120, "six evaluations")
    except AssertionError as error:
        raise AssertionError(f"{error}; the daemon's log:\n{daemon.log}") from None
    finally:
        assert daemon.stop() == 0, daemon.log
    return config


def referenced(page: Path) -> list[str]:
    """The files the page links to (not the paper's address)."""
    html = page.read_text(encoding="utf-8")
    links = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)
    return [link for link in links if not link.startswith("https://")]


def strip_tags(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


class _Outline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        name = tag + "".join(f".{css}" for css in (found.get("class") or "").split())
        self.tags.append(name + (f"#{found['id']}" if found.get("id") else ""))


def outline(html: str) -> list[str]:
    """Every start tag in page order as ``tag.class#id``: the page's structure to assert on."""
    parser = _Outline()
    parser.feed(html)
    return parser.tags


def body_outline(html: str, *tags: str) -> list[str]:
    """The outline after ``<h1>``, keeping only the named tags (with their classes and ids)."""
    found = outline(html)
    after = found[found.index("h1") + 1 :]
    return [t for t in after if re.split(r"[.#]", t, maxsplit=1)[0] in tags]


def element(html: str, css: str) -> str:
    """The text of the first ``<li class='css'>``."""
    match = re.search(rf"<li class='{css}'>(.*?)</li>", html)
    assert match is not None, f"no <li class='{css}'> in the page"
    return strip_tags(match.group(1))
