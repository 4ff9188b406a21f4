"""Stopping cleanly: preemption signals, the stop that all ranks agree on, and the exception that ends a stopped
run once last.pt and metrics.json are written."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import torch

from cifarbench import distributed

log = logging.getLogger("cifarbench")


class TrainingInterrupted(Exception):
    """A signal stopped the run after an optimizer step; last.pt holds everything needed to continue."""


def _preemption_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM (torchrun, `kill`, SLURM at the end), SIGINT (Ctrl-C), SIGUSR1/SIGUSR2 (what `sbatch --signal`
    sends; submitit uses SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another) and whatever SUBMITIT_PREEMPT_SIGNAL
    names."""
    names = ["SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"]  # SIGINT: Ctrl-C stops as cleanly as a scheduler does
    submitit_signal = os.environ.get("SUBMITIT_PREEMPT_SIGNAL")
    if submitit_signal:
        names.append("SIG" + submitit_signal.upper().removeprefix("SIG"))
    return tuple(dict.fromkeys(getattr(signal, n) for n in names if hasattr(signal, n)))


class StopSignals:
    """A preemption signal asks for a clean stop at the next optimizer-step boundary; a second one, sent well after
    the first (a user pressing Ctrl-C again), exits at once.

    Signals that arrive within `repeat_window_s` of the first are the same stop request delivered twice: under
    `srun ... torchrun`, SLURM signals every process of the step and torchrun forwards its own SIGTERM to the workers
    too, so each worker gets two signals milliseconds apart. Treating the second as "exit now" would lose last.pt.

    After last.pt and metrics.json are written, `hand_over()` calls the handler that was installed before ours
    (submitit's requeue handler on SLURM), so a preempted job is still requeued; with no such handler the run
    exits with EXIT_INTERRUPTED.
    """

    def __init__(self, repeat_window_s: float = 1.5):
        self.repeat_window_s = repeat_window_s
        self.requested: str | None = None
        self.signum: int | None = None
        self.requested_at: float | None = None
        self._previous: dict = {}
        self._handed_over: object = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _preemption_signals():
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested and self.requested_at is None:  # the stop came from another rank's vote: this is ours
            self.requested_at = time.monotonic()
            return
        if self.requested:
            since = time.monotonic() - self.requested_at
            if since < self.repeat_window_s:
                log.info("%s again %.2f s after %s: the same stop request (srun and torchrun both signal), still "
                         "saving last.pt", name, since, self.requested)
                return
            log.warning("second %s: exiting now", name)
            raise SystemExit(128 + signum)
        self.requested, self.signum, self.requested_at = name, signum, time.monotonic()
        self._handed_over = self._previous.get(signum)
        if self._handed_over is signal.default_int_handler:
            self._handed_over = None  # Python's own Ctrl-C handler would turn a clean stop into a KeyboardInterrupt
        log.warning("%s received: stopping at the next optimizer step and saving last.pt (send it again to exit at "
                    "once)", self.requested + (", Ctrl-C" if signum == signal.SIGINT else ""))

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def hand_over(self) -> None:
        """Run the earlier handler of the signal that stopped us (it may requeue and exit), once."""
        handler, self._handed_over = self._handed_over, None
        if callable(handler):
            log.info("handing %s over to the handler installed before cifarbench's", self.requested)
            handler(self.signum, None)


class StopVote:
    """Whether to stop now, agreed by every rank, without a host sync on every step.

    One process stops as soon as a signal has arrived. Under torchrun a signal may reach one rank only, and a rank
    that stops alone hangs the others, so the ranks vote with one small all-reduce. They vote at steps they all
    know: each vote also carries every rank's proposal for the number of steps until the next one, sized from the
    measured step time so that votes come about every `interval_s` seconds, and the smallest proposal wins. A stop
    therefore starts within a few seconds whatever the model size, well inside torchrun's 30 s between forwarding
    SIGTERM and SIGKILL.
    """

    def __init__(self, device: torch.device, enabled: bool, interval_s: float = 2.0):
        self.device = device
        self.enabled = enabled
        self.interval_s = interval_s
        self.steps_to_vote = 1
        self.steps_since_vote = 0
        self.last_vote: float | None = None

    def should_stop(self, requested, last: bool = False) -> bool:
        """Called by every rank at the same steps (optimizer-step boundaries); `last` forces a vote."""
        if not self.enabled:
            return bool(requested)
        self.steps_to_vote -= 1
        self.steps_since_vote += 1
        if self.steps_to_vote > 0 and not last:
            return False
        now = time.perf_counter()
        proposal = 1
        if self.last_vote is not None:
            per_step = max((now - self.last_vote) / self.steps_since_vote, 1e-6)
            proposal = int(min(max(self.interval_s / per_step, 1), 100_000))
        # MAX of [stop, -proposal]: any rank's stop, and the smallest proposal.
        votes = distributed.all_reduce_max(torch.tensor([int(bool(requested)), -proposal], device=self.device)).tolist()
        self.steps_to_vote, self.steps_since_vote, self.last_vote = -votes[1], 0, time.perf_counter()
        return bool(votes[0])
