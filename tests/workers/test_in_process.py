"""The worker's code run inside this process, in seconds: the fast tier's cover of test_queue.py and the
reliability probes, which run the same code as real worker and trainer processes (and are marked slow)."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from backend import jobs
from backend.vocab import JobStatus
from cli import main as cli_main
from workers import consumer, process, slots, tasks, train_process
from workers.queue import get_queue


@pytest.fixture
def own_signals():
    """The worker and the training process install SIGTERM / SIGINT handlers; give pytest its own back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def fresh_slots():
    yield
    slots.configure()


def _missing_dataset_job(lab) -> str:
    job_id = lab.submit(enqueue=False)
    jobs.update(job_id, config_yaml=jobs.get(job_id).config_yaml.replace("identity-demo", "/nowhere/x.jsonl"))
    return job_id


def test_the_training_process_entry_trains_a_job_and_exits_0(lab, monkeypatch, own_signals):
    monkeypatch.setattr(process, "die_with_parent", lambda: None)  # its parent here is pytest's shell
    job_id = lab.submit(enqueue=False, max_steps=2, save_steps=2)
    assert jobs.claim(job_id, owner=process.owner_id())
    assert train_process.main(job_id) == 0
    job = jobs.get(job_id)
    assert job.status == JobStatus.COMPLETED and job.step == 2


def test_the_task_fails_a_job_in_preflight_and_skips_one_it_cannot_claim(lab):
    job_id = _missing_dataset_job(lab)
    tasks.train(job_id)
    job = jobs.get(job_id)
    assert job.status == JobStatus.FAILED and "/nowhere/x.jsonl" in job.reason
    tasks.train(job_id)                 # a finished job's second queue message changes nothing
    assert jobs.get(job_id).reason == job.reason
    tasks.train("no-such-job")          # a message for a deleted job is ignored


def test_settle_requeues_a_job_whose_process_died_without_recording_its_end(lab):
    job_id = lab.submit(enqueue=False)
    assert jobs.claim(job_id, owner=process.owner_id())
    tasks.settle(job_id, process.Exit(code=-9))
    job = jobs.get(job_id)
    assert job.status == JobStatus.INTERRUPTED and job.task_id, "queued again for the next attempt"
    assert "killed" in job.reason.lower() or "signal" in job.reason.lower()


def test_slots_hand_out_gpus_and_wait_for_free_ones(fresh_slots):
    assert slots.configure(["0", "1"]) == 2 and slots.describe() == "0,1"
    with slots.acquire(5) as taken:
        assert taken == ["0", "1"]      # capped at what the machine has
        waiter = threading.Thread(target=lambda: slots.acquire(1).__enter__())
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive(), "a job waits while every slot is taken"
    waiter.join(2)
    assert not waiter.is_alive()
    assert slots.configure([]) == 1 and slots.describe() == "cpu"


def test_the_worker_command_consumes_the_queue_and_stops_on_sigterm(lab, own_signals, fresh_slots, capsys):
    job_id = _missing_dataset_job(lab)
    get_queue().train(job_id)           # enqueue through the task, as the UI does

    def stop_when_done():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and jobs.get(job_id).status != JobStatus.FAILED:
            time.sleep(0.1)
        signal.raise_signal(signal.SIGTERM)   # what `kill` does to `lorastudio worker`

    watcher = threading.Thread(target=stop_when_done)
    watcher.start()
    assert cli_main(["worker"]) == 0
    watcher.join()
    assert jobs.get(job_id).status == JobStatus.FAILED
    assert consumer.reap() == [], "nothing left for the reaper"


def test_jobs_and_models_commands_in_process(lab, capsys):
    job_id = lab.submit(enqueue=False)
    assert cli_main(["jobs", "list"]) == 0 and job_id in capsys.readouterr().out
    assert cli_main(["jobs", "show", job_id]) == 0 and "queued" in capsys.readouterr().out
    assert cli_main(["jobs", "cancel", job_id]) == 0
    assert jobs.get(job_id).status == JobStatus.CANCELLED
    assert cli_main(["jobs", "resume", job_id]) == 0 and jobs.get(job_id).status == JobStatus.QUEUED
    capsys.readouterr()
    assert cli_main(["jobs", "show", "no-such-job"]) == 1
    assert "no-such-job" in capsys.readouterr().err
    assert cli_main(["models", "list"]) == 0 and "tiny-llama" in capsys.readouterr().out
