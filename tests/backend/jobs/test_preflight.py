"""Checks before a job is queued: every problem at once, nothing loaded."""
from backend.jobs import preflight
from backend.config import JobConfig


def test_a_good_job_has_no_problems(tiny_model):
    assert preflight.problems(JobConfig.from_dict({"model": tiny_model, "dataset": "identity-demo"})) == []


def test_every_problem_is_reported_at_once(tmp_path):
    config = JobConfig.from_dict({"model": "no-such-model", "dataset": str(tmp_path / "missing.jsonl"),
                                  "stage": "dpo", "init_adapter": "no-such-job", "lora": {"r": 0}})
    found = {problem.split(":")[0] for problem in preflight.problems(config)}
    assert found == {"lora.r", "model", "dataset", "init_adapter"}


def test_a_dataset_of_the_wrong_shape_for_the_stage_is_named(tiny_model):
    problems = preflight.problems(JobConfig.from_dict({"model": tiny_model, "dataset": "identity-demo",
                                                       "stage": "dpo"}))
    assert len(problems) == 1 and problems[0].startswith("dataset:") and "chosen" in problems[0]
