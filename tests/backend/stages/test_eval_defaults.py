"""The default evaluation: only after the last step for short jobs, a capped seeded subset, batched."""
from backend.config import JobConfig
from backend.stages import common


def config(**training):
    return JobConfig.from_dict({"training": training})


def test_short_jobs_evaluate_only_after_the_last_step_long_ones_five_times():
    assert common.eval_every(config(), 40) == 0
    assert common.eval_every(config(), 1000) == 200
    assert common.eval_every(config(eval_steps=7), 40) == 7      # an explicit choice is kept
    precision = {"bf16": False, "fp16": False, "use_cpu": True}
    args = common.training_args(config(), __import__("pathlib").Path("/tmp/x"), precision, True, 0)
    assert args["eval_strategy"] == "no" and args["per_device_eval_batch_size"] == 8   # 2 x batch_size 4
    args = common.training_args(config(eval_batch_size=3), __import__("pathlib").Path("/tmp/x"), precision, True, 5)
    assert (args["eval_strategy"], args["eval_steps"], args["per_device_eval_batch_size"]) == ("steps", 5, 3)


def test_the_eval_subset_is_capped_seeded_and_the_same_every_time():
    rows = list(range(100))
    subset = common.eval_subset(rows, 64, seed=42)
    assert len(subset) == 64 and subset == sorted(subset) == common.eval_subset(rows, 64, seed=42)
    assert common.eval_subset(rows, 0, seed=42) == rows and common.eval_subset(rows[:10], 64, 1) == rows[:10]
    assert JobConfig.parse({"training": {"eval_steps": -1}})[1], "eval_steps below 0 is refused"
