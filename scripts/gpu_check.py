"""Check a GPU machine end to end in one command (a few minutes on one GPU), and print what holds.

    python scripts/gpu_check.py                  # everything below
    python scripts/gpu_check.py --skip torchrun  # leave out some checks (names as in the table)

Checks, each run in its own process, in a scratch directory (--work-dir keeps it):
  cuda-tests  `python -m pytest -m cuda`: kill + resume on CUDA, fp16 (GradScaler) and bf16, device loader host waits
  precision   a 3-epoch resnet20 run on synthetic data at precision 32, bf16, 16 and auto: test accuracy, img/s
  data        scripts/benchmark.py --only data: the on-device loader against the per-sample DataLoader, and the
              device loader alone at batch 128, 512 and 2,048 against the goal of 1M img/s (crop + flip + Cutout)
  airbench    scripts/benchmark.py --only airbench: experiment=airbench94, airbench94_muon, airbench95 and
              airbench96 through the trainer against a bare loop, both warmed up alike and alternating; the
              per-step ratio is judged, the fixed costs (checkpoints, TensorBoard, the confusion-matrix image) are
              reported apart
  torchrun    torchrun (nccl) on every visible GPU with the same global batch, or a one-process smoke run on a
              single-GPU machine
  compile     the run with trainer.compile=true (needs a C compiler on the host)
  sam         the run with sam=sam in fp16 (GradScaler) and bf16: accuracy, two passes per image, pass-img/s
  timm        a short fine-tune of a model=timm ViT from a local weights file (saved here, 100 classes, so the
              classifier is replaced) at 64 px, the images resized on the GPU: accuracy, img/s

Every check ends in a row of the table, whatever happens to it: a timeout is a row saying so.

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

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if str(SCRIPTS) not in sys.path:  # bench/ (scripts/benchmark.py's sections), also when loaded from elsewhere
    sys.path.insert(0, str(SCRIPTS))

from bench.goals import AIRBENCH_GOAL  # noqa: E402 - the goals the benchmark judges by, not a copy

CHECKS = ("cuda-tests", "precision", "data", "airbench", "torchrun", "compile", "sam", "timm")
# The runs of the precision, torchrun and compile checks (and tests/e2e/test_cuda.py's mixed-precision test): resnet20
# on 1,024 learnable synthetic images, 3 epochs of batch 64 (48 steps). The same overrides on the CPU reach 100% test
# accuracy for seeds 0-2 (measured; tests/e2e/test_gpu_check.py runs seed 0), so ACCURACY_BAR fails only a broken run.
GLOBAL_BATCH = 64
RUN = ["dataset=synthetic", "dataset.source.train_size=1024", "dataset.source.test_size=256", "model=resnet20",
       "trainer.epochs=3", f"trainer.batch_size={GLOBAL_BATCH}", "trainer.progress_bar=false", "trainer.resume=null"]
ACCURACY_BAR = 0.9
TIMED_OUT = 124


def run(command: list[str], cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        # The output captured so far arrives as bytes (or None), even with text=True.
        def text(out) -> str:
            return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")

        proc = subprocess.CompletedProcess(command, TIMED_OUT, text(expired.stdout),
                                           text(expired.stderr) + f"\ntimed out after {timeout:.0f} s")
    return proc, time.perf_counter() - started


def tail(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[-1][:160] if lines else f"exit status {proc.returncode}"


def torchrun_launcher(gpus: int) -> tuple[list[str], int]:
    """(launcher, per-rank batch): torchrun from this interpreter (no PATH lookup), and the per-rank batch that
    keeps the global batch at GLOBAL_BATCH whatever the GPU count (8 GPUs x 256 would train at 2,048)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m"]
    return launcher, max(GLOBAL_BATCH // gpus, 1)


def c_compiler() -> str | None:
    """The C compiler torch.compile's inductor would use for its host code (CC, else cc, gcc or clang)."""
    found = (shutil.which(name) for name in (os.environ.get("CC"), "cc", "gcc", "clang") if name)
    return next((path for path in found if path), None)


def run_check(name: str, check, work: Path) -> list[tuple[str, bool, str]]:
    """The check's rows; a check that raises is a failed row with the error, never the end of the table."""
    try:
        result = check(work)
    except Exception as error:  # noqa: BLE001 - the report must be printed whatever one check does
        return [(name, False, f"the check itself failed: {type(error).__name__}: {error}"[:200])]
    return result if isinstance(result, list) else [(name, *result)]


def train_run(work: Path, name: str, overrides: list[str], launcher: list[str] | None = None,
              judge=None) -> tuple[bool, str]:
    run_dir = work / name
    chosen = {o.split("=", 1)[0] for o in overrides if "=" in o}
    base = [o for o in RUN if o.split("=", 1)[0] not in chosen]  # a group chosen twice is a Hydra error
    command = (launcher or [sys.executable, "-m"]) + ["cifarbench.train", *base, *overrides, f"hydra.run.dir={run_dir}"]
    proc, wall = run(command, work, timeout=300)
    metrics_path = run_dir / "metrics.json"
    if proc.returncode != 0 or not metrics_path.is_file():
        return False, tail(proc)
    return (judge or judge_run)(json.loads(metrics_path.read_text()), wall)


def judge_run(metrics: dict, wall: float) -> tuple[bool, str]:
    ok = metrics["status"] == "completed" and metrics["test"]["acc"] > ACCURACY_BAR
    return ok, (f"test acc {100 * metrics['test']['acc']:.1f}% (bar {100 * ACCURACY_BAR:.0f}%), "
                f"{metrics['img_per_s']:.0f} img/s, {wall:.0f} s wall, {metrics['device']}, "
                f"precision {metrics.get('precision')}")


def check_cuda_tests(work: Path) -> tuple[bool, str]:
    proc, wall = run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-n", "0", str(REPO / "tests")], REPO,
                     timeout=480)
    summary = re.findall(r"\d+ (?:passed|failed|skipped|error)", proc.stdout)
    return proc.returncode == 0 and not any("skipped" in s for s in summary), f"{', '.join(summary)} in {wall:.0f} s"


def check_precision(work: Path) -> list[tuple[str, bool, str]]:
    return [(f"precision {p}", *train_run(work, f"precision_{p}", [f"trainer.precision={p}", "trainer.device=cuda"]))
            for p in ("32", "bf16", "16", "auto")]


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
        return [("data", False, failure)]
    return data_rows(result, wall)


def data_rows(result: dict, wall: float) -> list[tuple[str, bool, str]]:
    rows = result["configs"]
    text = "; ".join(f"{r['pipeline']}: {r['device_img_s']:.0f} vs {r['per_sample_img_s']:.0f} img/s = "
                     f"{r['ratio']:.1f}x" for r in rows)
    loader = result["loader_by_batch"]
    sweep = ", ".join(f"batch {b}: {r / 1e3:,.0f}k" for b, r in loader["img_s"].items())
    return [("data", all(r["meets_goal"] for r in rows), f"{text} ({wall:.0f} s)"),
            ("data 1M img/s", loader["meets_goal"],
             f"device loader, crop + flip + Cutout: {sweep} img/s; best {loader['best_img_s'] / 1e3:,.0f}k at batch "
             f"{loader['best_batch']} (goal {loader['goal_img_s'] / 1e3:,.0f}k)")]


def check_airbench(work: Path) -> tuple[bool, str]:
    """experiment=airbench94, airbench94_muon, airbench95 and airbench96 through the trainer against a bare loop doing
    the same work (scripts/benchmark.py)."""
    results, failure, wall = benchmark_section(work, "airbench", ["--ab-train-size", "50000", "--ab-epochs", "4"])
    if results is None:
        return False, failure
    return airbench_verdict(results, wall)


def airbench_verdict(results: dict, wall: float) -> tuple[bool, str]:
    """Judged on the per-step ratio, and on the counted FLOPs per step being the bare loop's (no extra model pass on
    the GPU path). A whole bare run takes seconds on an H100, so fixed costs (the trainer's checkpoints, TensorBoard
    and confusion-matrix image) dominate a whole-run ratio: they are reported in seconds beside it."""
    texts, ok = [], True
    for recipe, result in results["recipes"].items():
        train = result["train_ratio"]
        ok = ok and train >= AIRBENCH_GOAL and result["flop_ratio"] == 1.0
        texts.append(f"{recipe}: trainer/bare training {result['trainer_img_s']:.0f}/{result['bare_img_s']:.0f} "
                     f"img/s = {train:.3f} (goal >= {AIRBENCH_GOAL}); FLOPs per step x{result['flop_ratio']:.3f}, "
                     f"+{result['trainer_step_calls'] - result['bare_step_calls']:.0f} aten calls; fixed costs "
                     f"{result['trainer_fixed_s']:.1f} s vs {result['bare_fixed_s']:.1f} s; whole run "
                     f"{result['trainer_run_s']:.1f}/{result['bare_run_s']:.1f} s")
    return ok, f"{'; '.join(texts)} ({wall:.0f} s)"


def check_torchrun(work: Path) -> tuple[bool, str]:
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2:
        ok, text = train_run(work, "single_gpu", ["trainer.device=cuda"])
        return ok, f"one GPU, so a single-process smoke run: {text}"
    launcher, per_rank = torchrun_launcher(gpus)
    ok, text = train_run(work, "torchrun", ["trainer.device=cuda", f"trainer.batch_size={per_rank}"],
                         launcher=launcher)
    return ok, f"nccl on {gpus} GPUs, {per_rank} x {gpus} = {per_rank * gpus} images per step: {text}"


def check_compile(work: Path) -> tuple[bool, str]:
    if c_compiler() is None:
        return False, ("no C compiler on PATH (CC, cc, gcc or clang): torch.compile's inductor builds its host code "
                       "with one; install gcc (e.g. apt install build-essential) and rerun")
    return train_run(work, "compile", ["trainer.device=cuda", "trainer.compile=true"])


# The short fine-tune of the timm check: timm's 0.3M-parameter test ViT at 64 px (patch 16: a 4 x 4 grid) from a
# local file of 100 classes, on RUN's data. The same run on the CPU clears TIMM_BAR (tests/e2e/test_gpu_check.py).
TIMM_ARCH, TIMM_BAR = "test_vit", 0.5


def judge_sam(metrics: dict, wall: float) -> tuple[bool, str]:
    ok, text = judge_run(metrics, wall)
    passes = metrics.get("passes_per_image")
    return ok and passes == 2.0, (f"{text}; {passes} forward/backward passes per image, "
                                  f"{metrics.get('pass_img_per_s') or 0:.0f} pass-img/s")


def check_sam(work: Path) -> list[tuple[str, bool, str]]:
    return [(f"sam {p}", *train_run(work, f"sam_{p}", ["sam=sam", f"trainer.precision={p}", "trainer.device=cuda"],
                                    judge=judge_sam)) for p in ("16", "bf16")]


def timm_finetune(work: Path) -> list[str]:
    """The overrides of the timm check, its "pretrained" weights written to `work` first."""
    import timm
    import torch

    torch.manual_seed(0)
    weights = work / f"{TIMM_ARCH}_100_classes.pth"
    torch.save(timm.create_model(TIMM_ARCH, num_classes=100).state_dict(), weights)
    return ["model=timm", f"model.name={TIMM_ARCH}", f"model.pretrained_file={weights}", "model.input_size=64",
            "optimizer=adamw", "optimizer.lr=1e-3"]


def judge_finetune(metrics: dict, wall: float) -> tuple[bool, str]:
    acc = metrics["test"]["acc"] if metrics.get("test") else 0.0
    return metrics["status"] == "completed" and acc > TIMM_BAR, (
        f"test acc {100 * acc:.1f}% (bar {100 * TIMM_BAR:.0f}%), {metrics['img_per_s']:.0f} img/s at 64 px, "
        f"{metrics['gflops']:.3f} GFLOPs/img, {wall:.0f} s wall, {metrics['device']}, precision "
        f"{metrics.get('precision')}")


def check_timm(work: Path) -> tuple[bool, str]:
    try:
        overrides = timm_finetune(work)
    except ImportError:
        return False, "timm is not installed: pip install 'cifarbench[timm]'"
    return train_run(work, "timm_finetune", overrides + ["trainer.device=cuda"], judge=judge_finetune)


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
                        ("airbench", check_airbench), ("torchrun", check_torchrun), ("compile", check_compile),
                        ("sam", check_sam), ("timm", check_timm)):
        if name in args.skip:
            continue
        new = run_check(name, check, work)
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
