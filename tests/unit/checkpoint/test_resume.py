"""Resume in-process: exact continuation of every piece of state, older layouts, other devices and ranks, and the
clear errors when a checkpoint does not fit the run."""

from __future__ import annotations

import json
import logging
import math
import os
import signal

import pytest
import torch

from cifarbench import checkpoint, distributed
from cifarbench.checkpoint import load_checkpoint
from cifarbench.checkpoint.checkpointer import read_last
from cifarbench.engine.state import TrainState
from cifarbench.engine.trainer import Trainer, TrainingInterrupted
from cifarbench.errors import CheckpointError, ResumeRefusedError
from tests.helpers.compare import assert_same_run, same_weights
from tests.helpers.config import compose_config, tiny_cifar_overrides
from tests.helpers.events import scalars
from tests.helpers.runs import (
    SMALL,
    STEPS,
    TINY,
    reference_run,
    resume_error,
    signal_after_step,
    stopped_in_epoch_2,
    stopped_then_resumed,
    toy_trainer,
    train_in_process,
)


# ------------------------------------------------------------------------------------------------ resume on GPUs
def test_resume_restores_every_state_from_cpu_tensors_whatever_the_training_device(tmp_path, toy_conf, monkeypatch):
    """On CUDA a checkpoint mapped to the training device brings RNG states as CUDA tensors, which
    torch.set_rng_state and Generator.set_state reject. Here `meta` stands in for the GPU: the resume's RNG part
    believes it trains there, and every torch.load must map to the CPU (anything else would arrive on meta)."""
    extra = ["trainer.epochs=2", "mix=cutmix", "+callbacks=ema"]
    toy_trainer(toy_conf, tmp_path / "run", extra).fit()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    saved = checkpoint.load_checkpoint(last)

    real_load, locations = torch.load, []

    def load_as_on_a_gpu_box(f, map_location=None, **kwargs):
        locations.append(str(map_location))
        payload = real_load(f, map_location="cpu", **kwargs)
        if str(map_location) != "cpu":
            payload = torch.utils._pytree.tree_map(lambda x: x.to("meta") if isinstance(x, torch.Tensor) else x,
                                                   payload)
        return payload

    torch.manual_seed(1234)  # something else, so the restore has to happen for the checks below to pass
    resumed = toy_trainer(toy_conf, tmp_path / "other", extra + ["trainer.resume=null"])
    resumed.rank_parts["rng"].device = torch.device("meta")
    monkeypatch.setattr(torch, "load", load_as_on_a_gpu_box)
    resumed.checkpoints.load_last(read_last(last), last, resumed.parts, resumed.rank_parts,
                                  {"ema": resumed.callbacks["ema"]}, num_classes=10, model_name=resumed.model_name)
    monkeypatch.undo()

    assert locations == ["cpu"]
    rank0 = saved["ranks"][0]
    assert torch.equal(torch.get_rng_state(), rank0["rng"]["torch"]["cpu"])
    assert torch.equal(resumed.step.mix_generator.get_state(), rank0["rng"]["mix"])
    assert resumed.loaders.train.state_dict()["epoch"] == rank0["loader"]["epoch"]
    assert same_weights(resumed.model.state_dict(), saved["model"])
    assert same_weights(resumed.callbacks["ema"].ema.module.state_dict(), saved["callbacks"]["ema"]["module"])
    assert (resumed.state.epoch, resumed.state.global_step) == (2, saved["state"]["global_step"])


# --------------------------------------------------------------------------------- accumulation-group boundaries
def test_a_stop_inside_an_accumulation_group_waits_for_its_optimizer_step_and_resumes_exactly(tmp_path, toy_conf,
                                                                                              monkeypatch):
    extra = ["trainer.epochs=2", "trainer.accumulate_steps=2", "trainer.resume=auto"]
    straight = toy_trainer(toy_conf, tmp_path / "straight", extra)
    straight.fit()

    signal_after_step(monkeypatch, signal.SIGTERM, epoch=1, step=3)  # the first micro-batch of the second group
    with pytest.raises(TrainingInterrupted):
        toy_trainer(toy_conf, tmp_path / "run", extra).fit()
    monkeypatch.undo()
    saved = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["state"]["step_in_epoch"]) == (1, 4), "stopped with half a group's gradient"

    resumed = toy_trainer(toy_conf, tmp_path / "run", extra)
    resumed.fit()
    assert resumed.state.global_step == straight.state.global_step
    assert same_weights(resumed.model.state_dict(), straight.model.state_dict())


# ------------------------------------------------------------------------------- a GPU box's last.pt, elsewhere
def test_a_mid_epoch_last_pt_written_on_a_gpu_resumes_exactly_on_the_cpu(tmp_path, toy_conf, monkeypatch):
    """A run preempted mid-epoch on a GPU node and resumed on another kind of device. Its last.pt then holds CUDA
    generator states (16 bytes; a CPU one is 5,056), which a CPU generator refuses with a bare RuntimeError. The
    loader's position is two integers, and the CUDA streams are for CUDA only: the resume continues exactly."""
    extra = ["trainer.epochs=2", "augment=standard", "trainer.resume=auto"]  # crop + flip: the loader's draws count

    def as_written_on_a_gpu(saved: dict) -> dict:
        assert saved["state"]["step_in_epoch"] == 3
        cuda_state = torch.zeros(16, dtype=torch.uint8)  # the shape of a CUDA generator's state: seed and offset
        for rank in saved["ranks"]:
            rank["loader"]["generator"] = cuda_state.clone()  # what a GPU node's cifarbench before this fix saved
            rank["rng"]["torch"].update(cuda=[cuda_state.clone()], cuda_device=0)
        return saved

    straight, resumed = stopped_then_resumed(toy_conf, tmp_path, monkeypatch, extra, as_written_on_a_gpu, step=3)
    assert resumed.state.global_step == straight.state.global_step == 32
    assert same_weights(resumed.model.state_dict(), straight.model.state_dict())
    # An absolute anchor: the weights moved from their start (a resume that trained nothing would not match).
    fresh = toy_trainer(toy_conf, tmp_path / "fresh", ["trainer.epochs=2", "trainer.resume=null"])
    assert not same_weights(fresh.model.state_dict(), straight.model.state_dict())


def test_rng_states_of_more_gpus_than_visible_restore_what_fits_and_this_processs_own(monkeypatch, caplog):
    """A checkpoint from a 4-GPU node, process 3 (cuda:3), resumed where it sees one GPU: set_rng_state_all would
    raise IndexError. The first state goes to GPU 0, then this process's own stream (cuda:3's) to the GPU it
    trains on now, and the log says what was dropped."""
    from cifarbench.device import set_rng_states

    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: [][len(states)])  # as on a 1-GPU box
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    before = torch.get_rng_state()
    set_rng_states({"cpu": before, "cuda": saved, "cuda_device": 3}, torch.device("cuda", 0))
    assert calls == [(0, 0), (3, 0)]
    assert "RNG states of 4 GPUs and this machine sees 1" in caplog.text
    assert torch.equal(torch.get_rng_state(), before)


# -------------------------------------------------------------------------------------- multi-node resume
def test_a_rank_that_cannot_read_rank_0s_last_pt_stops_every_rank_naming_file_and_node(tmp_path, monkeypatch):
    """Rank 1's view of a two-rank run (the collectives faked): rank 0 chose a last.pt this node can't see."""
    import socket

    from cifarbench.checkpoint.checkpointer import agree_on_resume
    from cifarbench.distributed import DistContext

    missing = tmp_path / "node0-only" / "checkpoints" / "last.pt"
    looked = []
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: looked.append(obj) or
                        {"path": str(missing), "error": None})
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: [None, obj])
    with pytest.raises(CheckpointError) as error:
        agree_on_resume(tmp_path / "rank1-view", "auto", DistContext(rank=1, world_size=2))
    message = str(error.value)
    assert str(missing) in message and socket.gethostname() in message and "rank 1" in message
    assert looked == [{"path": None, "error": None}], "rank 1 must not look for a checkpoint itself"


COUNTER = ["+callbacks.counter._target_=tests.helpers.toy_callbacks.StepCounter"]


def same_module_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


EXTRA = ["trainer.epochs=3", "trainer.resume=auto", "+callbacks=[ema,swa]", "callbacks.ema.decay=0.9",
         "callbacks.swa.start_epoch=2", "callbacks.swa.anneal_epochs=1", "callbacks.swa.lr=0.02", "mix=cutmix"]


@pytest.mark.slow
def test_a_new_stateful_callback_is_checkpointed_and_resumed_exactly(tmp_path, toy_conf, monkeypatch):
    straight, resumed = stopped_then_resumed(toy_conf, tmp_path, monkeypatch, EXTRA + COUNTER)
    counter, again = straight.callbacks["counter"], resumed.callbacks["counter"]
    assert counter.steps == straight.state.global_step == 3 * 256 // 16
    assert (again.steps, again.pixel_sum) == (counter.steps, counter.pixel_sum)
    assert checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["callbacks"]["counter"] == {
        "steps": counter.steps, "pixel_sum": counter.pixel_sum}
    assert same_module_weights(resumed.model, straight.model)


def as_layout_1(payload: dict) -> dict:
    """last.pt as cifarbench wrote it before the engine: state fields and EMA/SWA at the top level."""
    old = {k: v for k, v in payload.items() if k not in ("state", "callbacks", "layout")}
    old.update(payload["state"])
    old["ema"], old["swa"] = payload["callbacks"]["ema"], payload["callbacks"]["swa"]
    return old


@pytest.mark.slow
def test_a_last_pt_of_the_older_layout_resumes_exactly(tmp_path, toy_conf, monkeypatch):
    straight, resumed = stopped_then_resumed(toy_conf, tmp_path, monkeypatch, EXTRA, rewrite=as_layout_1)
    assert resumed.state.global_step == straight.state.global_step
    assert same_module_weights(resumed.model, straight.model)
    assert same_module_weights(resumed.callbacks["ema"].ema.module, straight.callbacks["ema"].ema.module)
    assert resumed.state.history[-1]["test_ema/acc"] == straight.state.history[-1]["test_ema/acc"]


def test_an_unknown_last_pt_layout_or_other_callbacks_get_a_clear_message(tmp_path, toy_conf):
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "+callbacks=ema"]).fit()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(ResumeRefusedError, match=r"different config \(callbacks.ema: \{.*\} -> \(absent\)\)"):
        toy_trainer(toy_conf, tmp_path / "other", [f"trainer.resume={last}", "trainer.epochs=1"])
    payload = checkpoint.load_checkpoint(last)
    checkpoint.save_checkpoint(tmp_path / "future.pt", {**payload, "layout": 99})
    with pytest.raises(CheckpointError, match=r"future.pt has a last.pt layout \(99\)"):
        toy_trainer(toy_conf, tmp_path / "other", [f"trainer.resume={tmp_path / 'future.pt'}", "+callbacks=ema"])


def test_a_layout_1_last_pt_is_upgraded_with_both_ema_and_swa_under_callbacks():
    from pathlib import Path

    from cifarbench.compat import LAST_LAYOUT, LAYOUT1_STATE_FIELDS, upgrade_last

    state = TrainState(epoch=2, global_step=8).state_dict()
    old = {"kind": "last", "model": {"w": torch.ones(1)}, "ema": {"num_updates": 8}, "swa": {"scheduler": None},
           **{name: state[name] for name in LAYOUT1_STATE_FIELDS}}
    upgraded = upgrade_last(old, Path("last.pt"))
    assert upgraded["layout"] == LAST_LAYOUT
    assert upgraded["callbacks"] == {"ema": {"num_updates": 8}, "swa": {"scheduler": None}}
    # The fields added since layout 1 get the values that describe a run saved before them.
    assert upgraded["state"] == {**{name: state[name] for name in LAYOUT1_STATE_FIELDS}, "wall_time_s": 0.0,
                                 "sessions": [], "target": None, "extra_passes": 0, "step_curve_from": None}
    assert set(upgraded) == {"kind", "model", "callbacks", "state", "layout", "loggers"}
    no_swa = upgrade_last({**old, "swa": None}, Path("last.pt"))
    assert no_swa["callbacks"] == {"ema": {"num_updates": 8}}


def test_sigusr1_mid_epoch_resume_is_exact_in_process(tmp_path, monkeypatch):
    """SIGUSR1 (what `sbatch --signal=USR1@...` sends), sent from inside step 2 of epoch 2; torch loader, CutMix and
    label smoothing."""
    overrides = SMALL + ["dataset.loader=torch", "dataset.num_workers=0", "mix=cutmix", "loss.label_smoothing=0.1",
                         "trainer.epochs=2", "trainer.resume=auto"]
    reference = reference_run(overrides, tmp_path / "reference")

    def send_sigusr1():
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN), "no SIGUSR1 handler"
        os.kill(os.getpid(), signal.SIGUSR1)

    run_dir = stopped_in_epoch_2(monkeypatch, overrides, tmp_path / "run", send_sigusr1, "SIGUSR1")
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    reference_run(overrides, run_dir)
    assert_same_run(reference, run_dir, epochs=2)


def test_resume_path_that_does_not_exist(tmp_path):
    message = resume_error(tmp_path / "nope" / "last.pt", [], tmp_path)
    assert str(tmp_path / "nope" / "last.pt") in message and "no such file" in message
    assert "trainer.resume=auto" in message


def test_resume_auto_with_nothing_to_resume_starts_fresh_and_says_so(tmp_path, caplog):
    with caplog.at_level("INFO", logger="cifarbench"):
        trainer = Trainer(compose_config(TINY + ["trainer.resume=auto"]), tmp_path / "fresh", {})
    assert trainer.state.epoch == 0 and trainer.state.global_step == 0
    assert "starting a fresh run" in caplog.text and str(tmp_path / "fresh" / "checkpoints" / "last.pt") in caplog.text


def test_resume_from_best_pt_asks_for_last_pt(tmp_path, trained):
    message = resume_error(trained / "best.pt", [], tmp_path)
    assert "'best' checkpoint" in message and "last.pt" in message


def test_resume_with_another_architecture_names_both(tmp_path, trained):
    message = resume_error(trained / "last.pt", ["model=resnet32"], tmp_path)
    assert str(trained / "last.pt") in message
    assert "resnet20" in message and "resnet32" in message, f"both architectures must be named: {message}"


def test_resume_with_another_num_classes_names_both(tmp_path, trained):
    message = resume_error(trained / "last.pt", ["dataset.num_classes=5"], tmp_path)
    assert "num_classes: 10 -> 5" in message, f"the checkpoint's 10 classes and this run's 5: {message}"


# ------------------------------------------------------------------------------------------- resume
def test_more_epochs_on_resume_extend_the_schedule_instead_of_training_at_lr_0(tmp_path, toy_conf, caplog):
    run_dir = tmp_path / "run"
    toy_trainer(toy_conf, run_dir, ["trainer.epochs=2", "trainer.log_every_n_steps=2"]).fit()
    caplog.set_level(logging.INFO, logger="cifarbench")
    extended = toy_trainer(toy_conf, run_dir, ["trainer.epochs=3", "trainer.log_every_n_steps=2"])
    # The cosine schedule of a 3-epoch run at step 32 of 48, not the end of the 2-epoch one (lr 0).
    expected = 0.1 * 0.5 * (1 + math.cos(math.pi * 2 * STEPS / (3 * STEPS)))
    assert extended.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert "extending this run from 2 to 3 epochs" in caplog.text
    result = extended.fit()
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    lr_steps = dict(scalars(run_dir)["lr_step"])
    step = 2 * STEPS + 2  # epoch 3 trains on the 3-epoch cosine (the lr of step s is the factor at s - 1)
    assert lr_steps[step] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (step - 1) / (3 * STEPS))))
    assert len(result["sessions"]) == 2 and result["sessions"][1]["extended"]["from_epochs"] == 2
    # Wall time covers both sessions, not only the last one.
    assert result["wall_time_s"] >= sum(s["wall_time_s"] for s in result["sessions"]) > result["session_wall_time_s"]
    assert "epochs: 3" in (run_dir / "config.yaml").read_text()


def test_rerunning_a_finished_run_leaves_it_alone_and_a_larger_epochs_still_extends_it(tmp_path, toy_conf, caplog):
    """What rerunning a sweep to finish its missing jobs does to the finished ones: nothing (it used to test each
    again and add that time to its wall time), and the job's value is the stored one."""
    from cifarbench.cli.train import run_one
    from tests.helpers.runs import toy_overrides

    run_dir = tmp_path / "run"
    toy_trainer(toy_conf, run_dir, ["trainer.epochs=2"]).fit()
    files = [run_dir / "metrics.json", run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"]
    before = [f.read_bytes() for f in files]
    metrics = json.loads(before[0])
    assert metrics["status"] == "completed" and 0 < metrics["best"]["test/acc"] <= 1
    info = {"overrides": [], "choices": {}, "multirun": True, "hydra_files": {}}
    caplog.set_level(logging.INFO, logger="cifarbench")
    value = run_one(compose_config(toy_overrides(toy_conf, 16) + ["trainer.epochs=2"]), run_dir, info, True)
    assert value == metrics["best"]["test/acc"]
    assert [f.read_bytes() for f in files] == before and "already completed with this config" in caplog.text
    # Another config is the Trainer's to refuse (the job fails, the run is untouched); a larger trainer.epochs trains.
    assert run_one(compose_config(toy_overrides(toy_conf, 16) + ["trainer.epochs=2", "optimizer.lr=0.3"]), run_dir,
                   info, True) == float("-inf")
    assert json.loads((run_dir / "metrics.json").read_text())["wall_time_s"] == metrics["wall_time_s"]
    # Stopped after the last epoch's last.pt but before its test ended: not finished, so it resumes and tests.
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "status": "interrupted"}))
    run_one(compose_config(toy_overrides(toy_conf, 16) + ["trainer.epochs=2"]), run_dir, info, True)
    tested = json.loads((run_dir / "metrics.json").read_text())
    assert tested["status"] == "completed" and len(tested["sessions"]) == 2
    run_one(compose_config(toy_overrides(toy_conf, 16) + ["trainer.epochs=3"]), run_dir, info, True)
    extended = json.loads((run_dir / "metrics.json").read_text())
    assert extended["epochs"] == 3 and extended["sessions"][-1]["extended"]["from_epochs"] == 2


def test_muons_newton_schulz_dtype_may_change_on_resume_as_the_device_may():
    from cifarbench.checkpoint.resume import config_differences

    saved = {"optimizers": {"muon": {"optimizer": {"lr": 0.24}}}, "trainer": {"device": "cuda"}}
    now = {"optimizers": {"muon": {"optimizer": {"lr": 0.24, "ns_dtype": "float32"}}}, "trainer": {"device": "cpu"}}
    assert config_differences(saved, now) == {}
    now["optimizers"]["muon"]["optimizer"]["lr"] = 0.3
    assert list(config_differences(saved, now)) == ["optimizers.muon.optimizer.lr"]


def test_a_resume_with_a_changed_config_is_refused_and_the_run_keeps_its_record(tmp_path, toy_conf):
    run_dir = tmp_path / "run"
    toy_trainer(toy_conf, run_dir, ["trainer.epochs=2"]).fit()
    (run_dir / "config.yaml").write_text("the run's own record\n")
    changes = {"trainer.epochs: 2 -> 1": ["trainer.epochs=1"],
               "optimizer.lr: 0.1 -> 0.5": ["trainer.epochs=2", "optimizer.lr=0.5"]}
    for shown, overrides in changes.items():
        with pytest.raises(ResumeRefusedError) as refused:
            toy_trainer(toy_conf, run_dir, overrides)
        message = str(refused.value)
        assert shown in message and "trainer.init_from=" in message and "\n" not in message
    assert (run_dir / "config.yaml").read_text() == "the run's own record\n"
    # Watching differently is not a different run: bars, log frequency, threads, workers may change.
    watched = toy_trainer(toy_conf, run_dir, ["trainer.epochs=2", "trainer.log_every_n_steps=3",
                                              "trainer.num_threads=2", "dataset.num_workers=1"])
    assert watched.state.epoch == 2


def test_init_from_starts_a_fresh_run_from_saved_weights_and_names_a_misfit(tmp_path, toy_conf):
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1"]).fit()
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    saved = checkpoint.load_checkpoint(best)["model"]
    tuned = toy_trainer(toy_conf, tmp_path / "tuned", [f"trainer.init_from={best}", "optimizer.lr=0.01"])
    assert tuned.state.epoch == 0 and tuned.state.global_step == 0
    for name, tensor in tuned.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    with pytest.raises(CheckpointError, match=r"trainer.init_from: .*must match"):
        toy_trainer(toy_conf, tmp_path / "other", [f"trainer.init_from={best}", "dataset.num_classes=5"])


def test_init_from_in_a_directory_with_its_own_last_pt_is_refused_but_its_own_rerun_resumes(tmp_path, toy_conf):
    """A newcomer reran into an existing run directory with trainer.init_from: the weights were silently ignored
    and the old model tested again. Now it is one message; the init_from run's own rerun still resumes."""
    toy_trainer(toy_conf, tmp_path / "source", ["trainer.epochs=1"]).fit()
    best = tmp_path / "source" / "checkpoints" / "best.pt"
    toy_trainer(toy_conf, tmp_path / "old", ["trainer.epochs=1"]).fit()
    with pytest.raises(ResumeRefusedError) as refused:
        toy_trainer(toy_conf, tmp_path / "old", ["trainer.epochs=1", f"trainer.init_from={best}"])
    message = str(refused.value)
    assert f"trainer.init_from: None -> '{best}'" in message and "new hydra.run.dir" in message
    assert "\n" not in message
    tuned = toy_trainer(toy_conf, tmp_path / "tuned", ["trainer.epochs=1", f"trainer.init_from={best}"])
    tuned.fit()
    rerun = toy_trainer(toy_conf, tmp_path / "tuned", ["trainer.epochs=2", f"trainer.init_from={best}"])
    assert rerun.state.epoch == 1  # resumed (and extended), not started again from best.pt


def test_resume_continues_at_the_next_epoch_with_the_saved_optimizer_state(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    train_in_process(tiny_cifar_overrides(cifar_root), run_dir)
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")

    cfg = compose_config(tiny_cifar_overrides(cifar_root) + ["trainer.epochs=2", "trainer.resume=auto"])
    trainer = Trainer(cfg, run_dir, {"overrides": [], "choices": {}})
    assert trainer.state.epoch == 1 and trainer.state.global_step == saved["state"]["global_step"]
    momentum = trainer.optimizer.state_dict()["state"]
    for key, state in saved["optimizer"]["state"].items():
        assert torch.equal(momentum[key]["momentum_buffer"], state["momentum_buffer"])
    assert trainer.scheduler.state_dict()["last_epoch"] == saved["scheduler"]["last_epoch"]
    result = trainer.fit()

    assert [h["epoch"] for h in result["history"]] == [1, 2]
    logged = scalars(run_dir)
    assert [step for step, _ in logged["train/loss"]] == [6, 12]


def test_resume_auto_without_a_checkpoint_starts_fresh(tmp_path, cifar_root, caplog):
    cfg = compose_config(tiny_cifar_overrides(cifar_root) + ["trainer.resume=auto"])
    with caplog.at_level("INFO", logger="cifarbench"):
        trainer = Trainer(cfg, tmp_path / "fresh", {})
    assert trainer.state.epoch == 0
    assert "starting a fresh run" in caplog.text
