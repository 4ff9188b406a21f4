"""Groups of runs and how sure their numbers are.

Runs whose configs differ only in their seeds (trainer.seed, trainer.seeds.*, the repeats of trainer.repeats) or
their cross-validation fold (dataset.fold) are one group: the same configuration measured several times. Each group
gets, per metric, n, mean, standard deviation, the 95% confidence interval of the mean (Student t with n - 1 degrees
of freedom) and min/max; with a baseline group, every other group gets the difference of mean accuracy, its 95% CI
and a p-value from Welch's t-test.

Why Welch, and not a test paired by seed: pairing helps only where a shared seed makes two runs' errors move
together. Across different configurations it does not (seed 3 of ResNet-20 and seed 3 of WRN-28-10 initialise
different networks and augment for different models), so a paired test gains nothing and needs equal, matched n.
Welch's test needs neither equal n nor equal variances (a bigger model often varies less), and it is the one a
reviewer expects. Folds are the one case where pairing would apply (every configuration sees the same held-out
fifth); Welch is conservative there, never optimistic. The statistics are scipy.stats', not written by hand.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cifarbench.errors import CifarbenchError

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
# Config keys that tell repeats of one configuration apart, never what the configuration is (and the Optuna trial's
# own bookkeeping: trial number, storage).
REPEAT_KEYS = ("trainer.seed", "trainer.seeds.", "trainer.repeats", "dataset.fold", "callbacks.optuna.")
AGGREGATED = {  # report column -> what the group tables call it
    "test_acc": "selected test acc",
    "final_test_acc": "final test acc",
    "best_val_acc": "selected val acc",
    "time_to_target_s": "time to target",
    "wall_time_s": "wall time",
    "img_per_s": "img/s",
}
COMPARED = ("test_acc", "final_test_acc")  # the accuracy a baseline comparison uses: the first that the runs have


@dataclass
class Summary:
    """One metric of one group: the statistics of its n finite values."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / self.n if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None below two values."""
        if self.n < 2:
            return None
        import numpy as np

        return float(np.std(self.values, ddof=1))

    @property
    def ci(self) -> tuple[float, float] | None:
        """The 95% confidence interval of the mean (Student t); None below two values."""
        if self.n < 2:
            return None
        from scipy import stats

        sem = stats.sem(self.values)
        if sem == 0:
            return self.mean, self.mean
        low, high = stats.t.interval(CONFIDENCE, self.n - 1, loc=self.mean, scale=sem)
        return float(low), float(high)

    @property
    def min(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def max(self) -> float | None:
        return max(self.values) if self.values else None


@dataclass
class Comparison:
    """A group against the baseline on one accuracy: difference of means (group - baseline), its 95% CI, Welch's
    p-value; p and the CI are None where either side has fewer than two runs."""

    metric: str
    difference: float
    ci: tuple[float, float] | None
    p_value: float | None

    @property
    def significant(self) -> bool | None:
        return None if self.p_value is None else self.p_value < ALPHA


@dataclass
class Group:
    label: str  # what sets it apart from the other groups (overrides), or the model's name
    runs: list[dict]
    summaries: dict[str, Summary] = field(default_factory=dict)
    comparison: Comparison | None = None
    is_baseline: bool = False
    config: dict[str, str] = field(default_factory=dict)  # its config_identity (key -> JSON value), {} without one

    @property
    def n(self) -> int:
        return len(self.runs)


# ------------------------------------------------------------------------------------------------ grouping
def is_repeat_key(key: str) -> bool:
    return any(key == name or (name.endswith(".") and key.startswith(name)) for name in REPEAT_KEYS)


def _flat(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: json.dumps(node, sort_keys=True, default=str)}


def config_identity(run_dir: str | Path) -> tuple | None:
    """The run's resolved config (config.yaml) without its repeat keys and the keys that never change what a run
    computes (where it runs and writes, how it is watched: cifarbench.checkpoint.resume.WATCH_ONLY); None without
    one. A config stored before some keys existed is read as a resume reads it (cifarbench.compat: today's names,
    and each added key at the value that reproduces the older run), so a sweep whose first job was run by an older
    cifarbench still makes one group."""
    from cifarbench.checkpoint.resume import is_watch_only
    from cifarbench.compat import KEYS_ADDED, upgrade_config

    path = Path(run_dir) / "config.yaml"
    try:
        import yaml

        config = yaml.safe_load(path.read_text())
    except (OSError, ValueError, ImportError):
        return None
    if not isinstance(config, dict):
        return None
    flat = _flat(upgrade_config(config))
    for key, value in KEYS_ADDED.items():
        if not any(name == key or name.startswith(f"{key}.") for name in flat):
            flat.update(_flat({key: value}))
    return tuple(sorted((key, value) for key, value in flat.items()
                        if not is_repeat_key(key) and not is_watch_only(key)))


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~")


def own_overrides(run: dict) -> list[str]:
    """The run's overrides without those that only choose a seed or a fold, or where it runs and writes."""
    from cifarbench.checkpoint.resume import is_watch_only

    return [item for item in run["override_list"]
            if not is_repeat_key(_override_key(item)) and not is_watch_only(_override_key(item))]


def group_runs(runs: list[dict]) -> list[Group]:
    """Completed runs in groups of one configuration each, in order of first appearance; a run without config.yaml
    is grouped by its overrides (without seeds and folds)."""
    keyed: dict[tuple, list[dict]] = {}
    for run in runs:
        if run["status"] != "completed":
            continue
        identity = config_identity(run["run_dir"])
        key = ("config", identity) if identity is not None else ("overrides", tuple(sorted(own_overrides(run))))
        keyed.setdefault(key, []).append(run)
    groups = [Group("", members, config=dict(key[1]) if key[0] == "config" else {})
              for key, members in keyed.items()]
    labels = group_labels(groups)
    for group, label in zip(groups, labels):
        group.label = label
        for run in group.runs:
            run["group"] = label
        group.summaries = {key: Summary([run[key] for run in group.runs if run.get(key) is not None])
                           for key in AGGREGATED}
    return groups


def group_labels(groups: list[Group]) -> list[str]:
    """Each group's overrides that not every group shares; the model's name where that says nothing; numbered
    where labels still collide (the same overrides on different base configs)."""
    override_sets = [set(own_overrides(group.runs[0])) for group in groups]
    shared = set.intersection(*override_sets) if groups else set()  # said once above the tables
    labels = []
    for group in groups:
        own = [item for item in own_overrides(group.runs[0]) if item not in shared]
        labels.append(" ".join(own) or group.runs[0]["model"] or "all runs")
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        if labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            labels[index] = f"{label} #{seen[label]}"
    return labels


# ---------------------------------------------------------------------------------------------- baseline
def parse_selector(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split():
        if "=" not in item:
            raise CifarbenchError(f"--baseline {text!r}: {item!r} is not key=value; give overrides that pick out one "
                                  "group, e.g. --baseline 'model=resnet20'")
        key, value = item.split("=", 1)
        pairs.append((key.lstrip("+"), value))
    return pairs


def matches(group: Group, pairs: list[tuple[str, str]]) -> bool:
    """Every key=value holds for the group: as one of its overrides, its config-group choice, or its config value."""
    run = group.runs[0]
    overrides = set(own_overrides(run))
    return all(f"{key}={value}" in overrides or str(run.get("choices", {}).get(key)) == value
               or (key == "model" and run["model"] == value)
               or (key in group.config and str(json.loads(group.config[key])) == value)
               for key, value in pairs)


def pick_baseline(groups: list[Group], selector: str) -> Group:
    pairs = parse_selector(selector)
    found = [group for group in groups if matches(group, pairs)]
    names = "; ".join(f"'{group.label}'" for group in groups)
    if not found:
        raise CifarbenchError(f"--baseline {selector!r} matches no group of completed runs; the groups are: {names}")
    if len(found) > 1:
        raise CifarbenchError(
            f"--baseline {selector!r} matches {len(found)} groups ({'; '.join(repr(g.label) for g in found)}); add "
            "overrides until it picks out one")
    return found[0]


def compared_metric(groups: list[Group]) -> str | None:
    for key in COMPARED:
        if any(group.summaries[key].n for group in groups):
            return key
    return None


def welch(values: list[float], baseline: list[float], metric: str) -> Comparison:
    difference = sum(values) / len(values) - sum(baseline) / len(baseline)
    if len(values) < 2 or len(baseline) < 2:
        return Comparison(metric, difference, None, None)
    from scipy import stats

    if _constant(values) and _constant(baseline):  # no spread at all: the t statistic is undefined
        same = values[0] == baseline[0]
        return Comparison(metric, difference, (difference, difference), 1.0 if same else 0.0)
    with warnings.catch_warnings():
        # One side without spread (a fixed baseline) is fine for Welch, though scipy warns of precision loss.
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        result = stats.ttest_ind(values, baseline, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    return Comparison(metric, difference, (float(interval.low), float(interval.high)), float(result.pvalue))


def _constant(values: list[float]) -> bool:
    return max(values) == min(values)


def compare_to_baseline(groups: list[Group], selector: str) -> Group:
    """Marks the baseline and gives every other group its Comparison on the compared accuracy."""
    baseline = pick_baseline(groups, selector)
    metric = compared_metric(groups)
    baseline.is_baseline = True
    if metric is None or not baseline.summaries[metric].n:
        raise CifarbenchError(f"the baseline group '{baseline.label}' has no test accuracy to compare with")
    for group in groups:
        if group is not baseline and group.summaries[metric].n:
            group.comparison = welch(group.summaries[metric].values, baseline.summaries[metric].values, metric)
    return baseline


def best_versus_runner_up(groups: list[Group]) -> str | None:
    """A sentence on whether the group with the best mean accuracy is significantly better than the runner-up;
    None with fewer than two groups to compare."""
    metric = "best_val_acc" if any(group.summaries["best_val_acc"].n for group in groups) else compared_metric(groups)
    ranked = sorted((group for group in groups if metric and group.summaries[metric].n),
                    key=lambda group: group.summaries[metric].mean, reverse=True)
    if len(ranked) < 2:
        return None
    best, runner_up = ranked[0], ranked[1]
    test = welch(best.summaries[metric].values, runner_up.summaries[metric].values, metric)
    what = AGGREGATED[metric]
    head = (f"Best group: '{best.label}' ({what} {100 * best.summaries[metric].mean:.2f}%, n={best.n}) against "
            f"the runner-up '{runner_up.label}' ({100 * runner_up.summaries[metric].mean:.2f}%, n={runner_up.n})")
    if test.p_value is None:
        return f"{head}: not tested, since a group has fewer than 2 runs (use trainer.repeats or -m trainer.seed=...)."
    if test.significant:
        return f"{head}: significantly better (Welch p={test.p_value:.3g} < {ALPHA:g})."
    return (f"{head}: NOT significantly better (Welch p={test.p_value:.3g} >= {ALPHA:g}); the ranking of these two "
            "may be seed noise.")



def ci_text(summary: Summary, scale: float = 100.0, decimals: int = 2) -> str:
    """'94.12 ± 0.08' (mean ± half the 95% CI), the mean alone for n=1, '-' for none."""
    if summary.mean is None:
        return "-"
    if summary.ci is None:
        return f"{scale * summary.mean:.{decimals}f}"
    half = scale * (summary.ci[1] - summary.ci[0]) / 2
    return f"{scale * summary.mean:.{decimals}f} ± {half:.{decimals}f}"
