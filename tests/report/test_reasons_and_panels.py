"""The report's pure parts: stop reasons the real rule engine wrote, split into a list; which
panels the rules read and which have nothing to show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitor.report.history import RunHistory
from monitor.report.page import render_page
from monitor.report.panels import BEST_READER, choose_panels, rule_readers, unread_metrics
from monitor.report.reasons import MARKER, ReasonItem, split_reason
from monitor.rules.engine import replay
from monitor.rules.spec import parse_rules

# Sibling names repeat at each level (``decline-0`` inside ``any-0`` and beside it): the split
# must follow the heads' counts, not the names.
NESTED = [
    {
        "name": "nested",
        "kind": "all",
        "rules": [
            {
                "kind": "any",
                "rules": [
                    {"kind": "decline", "metric": "probe_loss", "mode": "min", "patience": 1},
                    {"kind": "threshold", "metric": "probe_accuracy", "stopping_threshold": 2},
                ],
            },
            {"kind": "decline", "metric": "probe_loss", "mode": "min", "patience": 1},
        ],
    }
]


def _results(losses: list[float]) -> list[tuple[int, dict[str, Any]]]:
    return [(100 * (i + 1), {"probe_loss": v, "probe_accuracy": 0.5}) for i, v in enumerate(losses)]


def _shape(item: ReasonItem) -> Any:
    return (item.rule, item.stop, [_shape(child) for child in item.children])


def _join(item: ReasonItem) -> str:
    """The one line the engine wrote, rebuilt from the tree."""
    parts = [item.text]
    for child in item.children:
        parts.append(f"[{child.rule}: {'stop' if child.stop else 'go on'}] {_join(child)}")
    return " ".join(parts)


def test_a_nested_combinators_reason_splits_into_its_tree() -> None:
    rules = parse_rules(NESTED, "inline")
    done = replay(rules, _results([1.0, 0.8, 0.9]))
    assert done.stop is not None and done.stop.step == 300
    tree = split_reason("nested", done.stop.reason)
    assert _shape(tree) == (
        "nested",
        True,
        [("any-0", True, [("decline-0", True, []), ("threshold-1", False, [])]),
         ("decline-1", True, [])],
    )  # fmt: skip
    assert tree.text == "2 of 2 sub-rules say stop (all must)."
    leaves = [tree.children[0].children[0], tree.children[0].children[1], tree.children[1]]
    for leaf in leaves:  # each sub-rule's own sentence, with no other rule's marker in it
        assert leaf.text.endswith(".") and not MARKER.search(leaf.text)
    assert leaves[0].text.startswith("probe_loss (raw) rose 0.1 above its best 0.8")
    assert "has not reached the stopping threshold 2" in leaves[1].text
    assert _join(tree) == done.stop.reason  # nothing the engine said is lost


def test_a_single_rules_reason_is_one_item_and_odd_text_is_kept_whole() -> None:
    rules = parse_rules(
        [{"name": "goal", "kind": "threshold", "metric": "probe_loss", "mode": "min",
          "stopping_threshold": 0.5}],
        "inline",
    )  # fmt: skip
    done = replay(rules, _results([0.9, 0.4]))
    assert done.stop is not None
    assert split_reason("goal", done.stop.reason) == ReasonItem("goal", True, done.stop.reason)
    odd = "1 of 3 sub-rules say stop (one is enough). [a: stop] first. [b: go on] second."
    item = split_reason("any", odd + " [c: go on] third. [d: stop] extra.")
    assert [(c.rule, c.stop, c.text) for c in item.children] == [
        ("a", True, "first."), ("b", False, "second."), ("c", False, "third."),
        ("d", True, "extra."),
    ]  # fmt: skip


def _pair_result(step: int) -> dict[str, Any]:
    """A pair-mode result's shape: sign stiffness 1.0 within every class at every step."""
    return {
        "step": step,
        "classes": [0, 1],
        "probe_loss": 1.0 / step,
        "probe_accuracy": 0.5,
        "cosine": {"within": 0.5 - step / 1000, "between": 0.0},
        "sign": {"within": 1.0, "between": 1.0},
        "distance": {"critical_length": None},
        "pair_sets": {"train-val": {"cosine": {"within": 0.2, "between": 0.1}}},
    }


def test_rule_panels_come_first_and_panels_with_nothing_to_show_are_left_out() -> None:
    rules = parse_rules(
        {
            "best": {"metric": "probe_accuracy", "mode": "max"},
            "rules": [
                {"name": "fell", "kind": "decline", "metric": "within_class"},
                {"name": "length", "kind": "threshold", "metric": "critical_length",
                 "mode": "min", "stopping_threshold": 0.1},
                {"name": "nan", "kind": "non_finite", "metrics": ["probe_loss", "within_class"]},
            ],
        },
        "inline",
    )  # fmt: skip
    assert rule_readers(rules) == {
        "within_class": ["fell", "nan"],
        "critical_length": ["length"],
        "probe_loss": ["nan"],
        "probe_accuracy": [BEST_READER],
    }
    results = [_pair_result(step) for step in (100, 200, 300)]
    read, rest = choose_panels(rules, results)
    # critical_length is read, but never has a value: no panel, and a note instead.
    assert [p.key for p in read] == ["stiffness", "probe-loss", "probe-accuracy"]
    assert read[0].read_by == ("fell", "nan")
    assert read[2].read_by == (BEST_READER,)
    assert unread_metrics(rules, results) == ["critical_length"]
    # Sign stiffness is 1.0 throughout and the train-val values never change: flat panels
    # that no rule reads are left out.
    assert [p.key for p in rest] == []
    assert [s.metric for s in read[1].series] == ["probe_loss"]  # no training split

    varying = [{**r, "pair_sets": {"train-val": {"cosine": {"within": r["step"] / 1e3,
                                                            "between": 0.1}}}}
               for r in results]  # fmt: skip
    _, rest = choose_panels(rules, varying)
    assert [p.key for p in rest] == ["train-val"]


def test_strings_from_the_store_are_escaped_in_the_summary() -> None:
    history = RunHistory(
        run="digits",
        steps=[10, 20],
        results=[_pair_result(10), _pair_result(20)],
        stop_step=20,
        stop_rule="<b>rule</b>",
        stop_reason="1 of 1 sub-rules say stop (one is enough). [<i>x</i>: stop] a < b & c.",
        best={"metric": "probe_loss", "mode": "min", "step": 20, "value": 0.05, "path": "<q>"},
        evaluations=2,
        stop_number=2,
        stop_checkpoint="/runs/<img src=x>.pt",
        saved_evaluations=0,
        last_step=20,
    )
    html = render_page([history], Path("config.yaml"), Path("state.db"))
    for raw in ("<b>rule", "<i>x", "<img src=x>", "<q>", "a < b"):
        assert raw not in html
    assert "<code>&lt;i&gt;x&lt;/i&gt;</code> (stop): a &lt; b &amp; c." in html
    assert "<code>/runs/&lt;img src=x&gt;.pt</code>" in html
