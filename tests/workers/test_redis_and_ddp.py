"""The same queue on RedisHuey with a real redis-server, and a data-parallel job (2 CPU processes, gloo)."""
from __future__ import annotations

import pytest

from backend import jobs
from tests.reliability.lab import complete_checkpoints, job_status, loss_steps, resumed_from, wait_until
from tests.plugins.studio_faults import fault_env

pytestmark = pytest.mark.slow  # redis-server, workers and torchrun processes train real jobs

SLOW = fault_env("slow_steps:0.4")


def test_redis_queue_happy_path_and_kill_9(redis_url, monkeypatch, start_worker, submit):
    monkeypatch.setenv("LORASTUDIO_REDIS_URL", redis_url)
    from workers.queue import get_queue
    assert type(get_queue().huey).__name__ == "RedisHuey"

    first = submit(max_steps=4)
    worker = start_worker(LORASTUDIO_REDIS_URL=redis_url)
    wait_until(lambda: job_status(first) == "completed", what="the Redis-queued job")
    assert loss_steps(first) == [1, 2, 3, 4]

    second = submit()
    worker.kill_group()
    worker = start_worker(LORASTUDIO_REDIS_URL=redis_url, **SLOW)
    wait_until(lambda: complete_checkpoints(second) and loss_steps(second)[-1:] >= [4], what="a checkpoint")
    worker.kill_group()
    start_worker(LORASTUDIO_REDIS_URL=redis_url)
    wait_until(lambda: job_status(second) == "completed", what="the resumed job")
    assert resumed_from(second)[0] >= 3 and loss_steps(second) == list(range(1, 13))
    assert jobs.get(second).attempts == 2


def test_two_process_data_parallel_job_logs_from_rank_0_only(start_worker, submit):
    job_id = submit(enqueue_it=False, max_steps=4)
    yaml_text = jobs.get(job_id).config_yaml.replace("resources:\n  gpus: 1", "resources:\n  gpus: 2")
    assert "gpus: 2" in yaml_text
    jobs.update(job_id, config_yaml=yaml_text)
    from workers.queue import enqueue
    enqueue(job_id)
    start_worker()
    wait_until(lambda: job_status(job_id) in ("completed", "failed"), timeout=300, what="the DDP job")
    job = jobs.get(job_id)
    assert job.status == "completed", job.reason
    assert loss_steps(job_id) == [1, 2, 3, 4], "one metrics line per step: rank 0 only"
    assert (job.run_dir / "train.rank1.log").exists(), "a second rank trained"
    assert (job.run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert "world size 2" in (job.run_dir / "train.log").read_text()
