"""run_job in this process: the record's end state, out-of-memory handling and auto_batch_size."""
from backend import jobs
from backend.config import JobConfig
from backend.jobs.runner import run_job
from tests.plugins.studio_faults import faults


def create_job(model: str, **training) -> str:
    settings = {"max_steps": 3, "batch_size": 4, "max_length": 96, "eval_fraction": 0.0, "save_steps": 100}
    settings.update(training)
    job = jobs.create(JobConfig.from_dict({"model": model, "lora": {"r": 4, "alpha": 8}, "training": settings}))
    jobs.claim(job.id, owner="inline:test:1")
    return job.id


def test_completed_job_records_results(tiny_model):
    job = run_job(create_job(tiny_model))
    assert job.status == "completed" and job.step == 3 and job.results["steps"] == 3
    assert job.results["final_train_loss"] is not None and (job.run_dir / "card.md").exists()


def test_out_of_memory_fails_with_the_suggestion(tiny_model):
    with faults("oom_if_batch_over:2"):
        job = run_job(create_job(tiny_model))
    assert job.status == "failed"
    assert job.reason.startswith("out of memory") and "smaller batch_size" in job.reason and "qlora" in job.reason


def test_auto_batch_size_retries_with_half_the_batch(tiny_model):
    with faults("oom_if_batch_over:2"):
        job = run_job(create_job(tiny_model, auto_batch_size=True))
    assert job.status == "completed", job.reason
    assert job.config.training.batch_size == 2 and job.config.training.grad_accum == 2
    assert "retrying with batch_size=2" in (job.run_dir / "train.log").read_text()


def test_a_trainer_whose_claim_was_taken_stops_and_writes_nothing(tiny_model):
    from transformers import TrainerCallback

    from backend.stages import harness

    job_id = create_job(tiny_model, max_steps=6, save_steps=100)

    class TakenOver(TrainerCallback):  # at step 2 another worker claims the job (the reaper re-queued it)
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                jobs.update(job_id, status="interrupted")
                jobs.claim(job_id, owner="otherhost:7:700")

    factory = harness.register_callback(lambda config: TakenOver())
    try:
        job = run_job(job_id)
    finally:
        harness.unregister_callback(factory)
    assert (job.status, job.owner, job.attempts) == ("running", "otherhost:7:700", 2), "the new claim is untouched"
    assert job.step < 6 and not (job.run_dir / "adapter").exists()
    assert "taken from this process" in (job.run_dir / "train.log").read_text()
