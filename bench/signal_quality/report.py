"""Assemble the markdown report: what was run, how "best" is defined, and the tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.signal_quality.outcomes import COSTLY_REGRET, Outcome
from bench.signal_quality.summary import TIE, choose, summarise
from bench.signal_quality.table import DATE, END, MACHINE, ORACLE, by_factor, headline, pct, per_run
from monitor.rule_spec import RuleSet

REPO = Path(__file__).resolve().parent.parent.parent
BASELINE = "probe_loss_patience"
DEFAULT = "default"


def same_rules(a: RuleSet, b: RuleSet) -> bool:
    return [r.model_dump() for r in a.rules] == [r.model_dump() for r in b.rules]


def readme_statement(
    results: Mapping[str, Sequence[Outcome]], names: set[str], healthy: set[str]
) -> str:
    """The two sentences the README carries: the default next to the baseline."""
    d = summarise([o for o in results[DEFAULT] if o.scenario in names], healthy)
    b = summarise([o for o in results[BASELINE] if o.scenario in names], healthy)
    return (
        f"On the signal-quality suite ({d.runs} held-out runs: digits MLP/CNN and a synthetic "
        f"20-class task, label noise 0-40%, two optimizers and learning rates), the default "
        f"rules stop with a mean regret of {pct(d.mean_regret)} points of test accuracy "
        f"(median {pct(d.median_regret)}, worst {pct(d.max_regret)}) and save "
        f"{pct(d.mean_saved)}% of training steps. The Lightning-style probe-loss patience "
        f"baseline (patience 3) gives {pct(b.mean_regret)} points (median "
        f"{pct(b.median_regret)}, worst {pct(b.max_regret)}) and saves {pct(b.mean_saved)}%."
    )


def render(
    results: Mapping[str, Sequence[Outcome]],
    histories: Sequence[dict[str, Any]],
    shipped: Mapping[str, RuleSet],
    candidates: Mapping[str, RuleSet],
    selection_seeds: tuple[int, ...],
    trained_seconds: float,
    run_seconds: Sequence[float],
    jobs: int,
) -> str:
    scenarios = {h["scenario"]["name"]: h["scenario"] for h in histories}
    healthy = {name for name, s in scenarios.items() if s["noise"] == 0.0}
    selection = {n for n, s in scenarios.items() if s["seed"] in selection_seeds}
    held_out = set(scenarios) - selection
    groups = {f"seeds {','.join(map(str, selection_seeds))} (selection)": selection}
    if held_out:
        seeds = sorted({s["seed"] for n, s in scenarios.items() if n in held_out})
        groups[f"seeds {','.join(map(str, seeds))} (held out)"] = held_out

    contenders = {k: v for k, v in {**shipped, **candidates}.items() if k != DEFAULT}
    chosen = choose({k: summarise([o for o in results[k] if o.scenario in selection], healthy)
                     for k in contenders})  # fmt: skip
    matches = DEFAULT in shipped and same_rules(shipped[DEFAULT], contenders[chosen])
    kinds = {ORACLE: "reference", END: "reference"}
    kinds.update({k: "shipped" for k in shipped})
    kinds.update({k: "candidate" for k in candidates})
    order = [ORACLE, DEFAULT, BASELINE, *sorted(k for k in shipped if k not in (DEFAULT, BASELINE)),
             *sorted(candidates), END]  # fmt: skip
    ordered = {k: results[k] for k in order if k in results}
    focus = {
        k: results[k] for k in [ORACLE, *sorted(shipped, key=order.index), END] if k in results
    }
    if trained_seconds:
        timing = (f"This table's histories were rebuilt here in {trained_seconds / 60:.1f} min "
                  f"of wall time with {jobs} worker processes.")  # fmt: skip
    else:
        timing = "This table was built from the cached histories."
    total = sum(run_seconds)
    lines = [
        "# Signal quality: where the stop rules stop",
        "",
        f"Date {DATE}, machine: {MACHINE}. Command: `python -m bench.signal_quality` "
        "(add `--rebuild` to retrain every run; histories are cached in "
        "`bench/cache/signal_quality/`).",
        f"{timing} The {len(histories)} runs took {total / 60:.1f} min of single-thread time "
        f"in all (median {sorted(run_seconds)[len(run_seconds) // 2]:.1f} s a run), i.e. "
        f"about {total / 60 / 2:.1f} min on two uncontended cores.",
        "",
        "## Results",
        "",
        "Regret: best test accuracy of the run minus the test accuracy at the stop, in points "
        "(a rule that never fires delivers the last checkpoint). Saved: share of the run's "
        "training steps after the stop. Early / costly: healthy runs (no label noise) "
        "stopped before their best checkpoint / of those, the ones that lost more than "
        f"{pct(COSTLY_REGRET)} point. The test split is clean and seen by no rule; the rules "
        "see only the clean held-out probe, evaluated by the product's `Evaluator` at every "
        "epoch's checkpoint and replayed by its `RuleEngine`.",
        "",
        *headline(ordered, groups, healthy, kinds),
        "",
        f"**Choice** (criterion fixed before the runs, applied to the selection seeds only, "
        f"over every candidate and shipped set but `default`): no costly early stop on a "
        f"healthy run (fewest, if none manages), then lowest mean regret, sets within "
        f"{pct(TIE)} point of it tied, ties to the larger saving. Chosen: `{chosen}`. "
        + (
            "`rules/default.yaml` holds exactly these rules."
            if matches
            else "**`rules/default.yaml` does NOT hold these rules: update it.**"
        ),
        "",
    ]
    if held_out and DEFAULT in results and BASELINE in results:
        lines += [
            "README statement (held-out seeds):",
            "",
            "> " + readme_statement(results, held_out, healthy),
            "",
        ]
    lines += [
        "## By factor (shipped rule sets, all seeds): mean regret (pp) / saved (%)",
        "",
        *by_factor(focus, scenarios, healthy),
        "",
        "## Every run (shipped rule sets): stop epoch (regret in points)",
        "",
        *per_run(focus, histories),
        "",
        "## The rule sets",
        "",
    ]
    for label, rules in {**shipped, **candidates}.items():
        source = Path(rules.source)
        shown = source.relative_to(REPO) if source.is_relative_to(REPO) else source
        lines.append(f"- `{label}` ({kinds[label]}, `{shown}`): {rules.description.strip()}")
    lines.append("")
    return "\n".join(lines)
