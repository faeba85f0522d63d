"""A running job says what it does (loading model, training, evaluating x/y, saving) in its record, its log,
`jobs list` and `jobs show --json`; the final evaluation runs once, on a capped subset, in batches."""
import json

from transformers import TrainerCallback

from backend import jobs
from backend.config import JobConfig
from backend.jobs.runner import run_job
from backend.jobs.summary import summarize
from backend.metrics import Metrics
from backend.stages import harness


def test_the_record_and_the_log_tell_each_phase(tiny_model):
    job = jobs.create(JobConfig.from_dict({"model": tiny_model, "lora": {"r": 4, "alpha": 8}, "training": {
        "max_steps": 3, "batch_size": 2, "max_length": 96, "eval_fraction": 0.3, "eval_max_rows": 6,
        "save_steps": 100}}))
    assert jobs.claim(job.id, owner="inline:test:1").phase_label == "loading model"
    seen = []

    class Watch(TrainerCallback):  # runs before the studio's hooks callback: sees the record as last written
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(("step", jobs.get(job.id).phase_label))

        def on_prediction_step(self, args, state, control, **kwargs):
            record = jobs.get(job.id)
            seen.append(("eval", record.phase_label, summarize(record).progress_line()))

    factory = harness.register_callback(lambda config: Watch())
    try:
        done = run_job(job.id)
    finally:
        harness.unregister_callback(factory)
    assert done.status == "completed", done.reason
    assert ("step", "training") in seen
    evals = [entry for entry in seen if entry[0] == "eval"]
    # 6 of the held-out rows, eval batch 2 x batch_size = 4: 2 batches; the second batch sees the first's count
    assert [label for _, label, _ in evals] == ["training", "evaluating 1/2"]
    assert "running (evaluating 1/2)" in evals[1][2]
    assert done.phase is None and done.phase_label == ""
    assert summarize(done).to_dict()["phase"] == ""

    log = (done.run_dir / "train.log").read_text()
    order = [log.index(text) for text in ("phase: loading", "phase: training", "phase: evaluating",
                                          "evaluation done in", "phase: saving")]
    assert order == sorted(order), log
    assert "eval: 6 of" in log and "after the last step only" in log

    metrics = Metrics.read(done.run_dir / "metrics.jsonl")
    evaluated = [r for r in metrics.records if "eval_loss" in r]
    assert [r["step"] for r in evaluated] == [3], "one final eval (the trainer's), not a second one"
    assert metrics.eval_plan == {"eval_rows": 6, "eval_batches": 2, "eval_every": 0, "final_eval": True,
                                 "rows_per_step": 2}
    facts = json.loads((done.run_dir / "run.json").read_text())
    assert facts["dataset"]["evaluated_rows"] == 6 and facts["dataset"]["eval_rows"] > 6
