"""Check a GPU machine end to end in one command (a few minutes on one GPU), and print what holds.

    python scripts/gpu_check.py                  # everything below
    python scripts/gpu_check.py --skip torchrun  # leave out some checks (names as in the table)

Checks, each run in its own process, in a scratch directory (--work-dir keeps it):
  cuda-tests  `python -m pytest -m cuda`: kill + resume on CUDA, fp16 (GradScaler) and bf16, device loader host waits
  precision   a 2-epoch resnet20 run on synthetic data at precision 32, bf16 and 16: test accuracy, img/s
  data        scripts/benchmark.py --only data: the on-device loader against the per-sample DataLoader
  airbench    scripts/benchmark.py --only airbench: experiment=airbench94 and airbench94_muon through the trainer
              against a bare loop
  torchrun    torchrun (nccl) on every visible GPU, or a one-process smoke run on a single-GPU machine
  compile     the 2-epoch run with trainer.compile=true

Without CUDA it exits at once with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKS = ("cuda-tests", "precision", "data", "airbench", "torchrun", "compile")
RUN = ["dataset=synthetic", "dataset.source.train_size=8192", "dataset.source.test_size=1024", "model=resnet20",
       "trainer.epochs=2", "trainer.batch_size=256", "trainer.progress_bar=false", "trainer.resume=null"]


def run(command: list[str], cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        proc = subprocess.CompletedProcess(command, 124, expired.stdout or "", f"timed out after {timeout:.0f} s")
    return proc, time.perf_counter() - started


def tail(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[-1][:160] if lines else f"exit status {proc.returncode}"


def train_run(work: Path, name: str, overrides: list[str], launcher: list[str] | None = None) -> tuple[bool, str]:
    run_dir = work / name
    command = (launcher or [sys.executable, "-m"]) + ["cifarbench.train", *RUN, *overrides, f"hydra.run.dir={run_dir}"]
    proc, wall = run(command, work, timeout=300)
    metrics_path = run_dir / "metrics.json"
    if proc.returncode != 0 or not metrics_path.is_file():
        return False, tail(proc)
    metrics = json.loads(metrics_path.read_text())
    ok = metrics["status"] == "completed" and metrics["test"]["acc"] > 0.5
    return ok, (f"test acc {100 * metrics['test']['acc']:.1f}%, {metrics['img_per_s']:.0f} img/s, "
                f"{wall:.0f} s wall, {metrics['device']}")


def check_cuda_tests(work: Path) -> tuple[bool, str]:
    proc, wall = run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-n", "0", str(REPO / "tests")], REPO,
                     timeout=480)
    summary = re.findall(r"\d+ (?:passed|failed|skipped|error)", proc.stdout)
    return proc.returncode == 0 and not any("skipped" in s for s in summary), f"{', '.join(summary)} in {wall:.0f} s"


def check_precision(work: Path) -> list[tuple[str, bool, str]]:
    return [(f"precision {p}", *train_run(work, f"precision_{p}", [f"trainer.precision={p}", "trainer.device=cuda"]))
            for p in ("32", "bf16", "16")]


def benchmark_section(work: Path, section: str, extra: list[str]) -> tuple[dict | None, str, float]:
    """One section of scripts/benchmark.py on CUDA: (its JSON result or None, the output's tail, wall seconds)."""
    out = work / f"bench_{section}.json"
    proc, wall = run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--device", "cuda", "--only", section,
                      *extra, "--json", str(out)], work, timeout=480)
    if proc.returncode != 0 or not out.is_file():
        return None, tail(proc), wall
    return json.loads(out.read_text())[section], "", wall


def check_data(work: Path) -> tuple[bool, str]:
    result, failure, wall = benchmark_section(work, "data", ["--data-rounds", "1"])
    if result is None:
        return False, failure
    rows = result["configs"]
    text = "; ".join(f"{r['pipeline']}: {r['device_img_s']:.0f} vs {r['per_sample_img_s']:.0f} img/s = "
                     f"{r['ratio']:.1f}x" for r in rows)
    return all(r["meets_goal"] for r in rows), f"{text} ({wall:.0f} s)"


def check_airbench(work: Path) -> tuple[bool, str]:
    """experiment=airbench94 and airbench94_muon through the trainer against a bare loop doing the same work
    (scripts/benchmark.py)."""
    results, failure, wall = benchmark_section(work, "airbench", ["--ab-train-size", "50000", "--ab-epochs", "4"])
    if results is None:
        return False, failure
    texts, ok = [], True
    for recipe, result in results["recipes"].items():
        train, whole = result["train_ratio"], result["run_ratio"]
        ok = ok and train >= 0.95 and whole <= 1.1
        texts.append(f"{recipe}: trainer/bare training {result['trainer_img_s']:.0f}/{result['bare_img_s']:.0f} "
                     f"img/s = {train:.3f} (goal >= 0.95), whole run {result['trainer_run_s']:.1f}/"
                     f"{result['bare_run_s']:.1f} s = {whole:.3f} (goal <= 1.1)")
    return ok, f"{'; '.join(texts)} ({wall:.0f} s)"


def check_torchrun(work: Path) -> tuple[bool, str]:
    import torch

    gpus = torch.cuda.device_count()
    torchrun = shutil.which("torchrun")
    if gpus < 2 or torchrun is None:
        ok, text = train_run(work, "single_gpu", ["trainer.device=cuda"])
        return ok, f"one GPU, so a single-process smoke run: {text}"
    ok, text = train_run(work, "torchrun", ["trainer.device=cuda"],
                         launcher=[torchrun, "--standalone", f"--nproc_per_node={gpus}", "-m"])
    return ok, f"nccl on {gpus} GPUs: {text}"


def check_compile(work: Path) -> tuple[bool, str]:
    return train_run(work, "compile", ["trainer.device=cuda", "trainer.compile=true"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", nargs="*", default=[], choices=CHECKS, help="checks to leave out")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run this on a GPU "
              "machine, with CUDA_VISIBLE_DEVICES set if needed", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cifarbench-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"gpu_check: {len(names)} GPU(s): {', '.join(names)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"work dir: {work}\n")

    rows: list[tuple[str, bool, str]] = []
    started = time.perf_counter()
    for name, check in (("cuda-tests", check_cuda_tests), ("precision", check_precision), ("data", check_data),
                        ("airbench", check_airbench), ("torchrun", check_torchrun), ("compile", check_compile)):
        if name in args.skip:
            continue
        result = check(work)
        new = result if isinstance(result, list) else [(name, *result)]
        for row in new:
            print(f"  {row[0]:<14} {'ok  ' if row[1] else 'FAIL'}  {row[2]}", flush=True)
        rows += new
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'check':<{width}} | holds | figures |\n|{'-' * (width + 2)}|-------|---------|")
    for name, ok, text in rows:
        print(f"| {name:<{width}} | {'yes' if ok else 'NO':<5} | {text} |")
    failed = [name for name, ok, _ in rows if not ok]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks hold in {time.perf_counter() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
