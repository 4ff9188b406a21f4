"""Hand-written metrics.json contents of a sweep, and the terminal table parsed back."""

from __future__ import annotations

RESNET = {
    "status": "completed",
    "error": None,
    "model": "resnet18",
    "dataset": "cifar10",
    "overrides": ["model=resnet18", "dataset=cifar10"],
    "params": 11173962,
    "gflops": 0.556,
    "epochs": 3,
    "monitor": "val/acc",
    "best": {"epoch": 3, "val/acc": 0.9501},
    "final": {"train/loss": 0.1, "train/acc": 0.97, "val/acc": 0.9501, "test/acc": 0.9433},
    "test": {"loss": 0.2, "acc": 0.9452, "top5": 0.9981},
    "wall_time_s": 7384.2,
    "img_per_s": 5120.7,
    "history": [
        {"epoch": 1, "val/acc": 0.61, "test/acc": 0.60},
        {"epoch": 2, "val/acc": 0.83, "test/acc": 0.82},
        {"epoch": 3, "val/acc": 0.9501, "test/acc": 0.9433},
    ],
}


WRN = {
    "status": "completed",
    "model": "wrn_28_10",
    "dataset": "cifar100",
    "overrides": ["model=wrn_28_10", "dataset=cifar100"],
    "params": 36479194,
    "gflops": 5.25,
    "epochs": 2,
    "best": {"epoch": 2, "val/acc": 0.8155},
    "final": {"val/acc": 0.8155},
    "test": {"loss": 0.7, "acc": 0.8102, "top5": 0.951},
    "wall_time_s": 59.6,
    "img_per_s": 812.0,
    "history": [{"epoch": 1, "val/acc": 0.7}, {"epoch": 2, "val/acc": 0.8155}],
}


FAILED = {
    "status": "failed",
    "error": "NonFiniteLossError: the training loss became nan in epoch 2 | lower optimizer.lr",
    "model": "pyramidnet110",
    "dataset": "cifar10",
    "overrides": ["model=pyramidnet110", "optimizer.lr=5"],
    "history": [{"epoch": 1, "val/acc": 0.1}],
}


OLD = {"model": "simple_cnn", "test": {"acc": 0.5}}  # an old run: no status, no costs, no history


RUNS = {"0_resnet": RESNET, "1_wrn": WRN, "2_failed": FAILED, "3_old": OLD}


def parse_terminal_table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Split the aligned table by the column spans of its dashed rule; check every cell sits in its span."""
    lines = text.splitlines()
    header, rule = lines[0], lines[1]
    spans, start = [], 0
    for dashes in rule.split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    titles = [header[a:b].strip() for a, b in spans]
    rows = []
    for line in lines[2:]:
        if not line.strip():
            break
        line = line.ljust(spans[-1][1])
        for a, _ in spans[1:]:
            assert line[a - 2 : a] == "  ", f"cell overflows its column in {line!r}"
        rows.append({title: line[a:b].strip() for title, (a, b) in zip(titles, spans)})
    return titles, rows
