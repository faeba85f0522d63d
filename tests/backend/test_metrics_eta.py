"""The ETA counts the evaluations still to run (and the one running now), not only the training steps."""
import pytest

from backend.metrics import EVAL_ROW_SHARE, Metrics


def records(steps=5, per_step=1.0, plan=None, evals=()):
    out = [{"step": 0, "eval_plan": plan}] if plan else []
    for step in range(1, steps + 1):
        out.append({"step": step, "loss": 2.0, "elapsed_s": step * per_step
                    + sum(runtime for at, runtime in evals if at < step)})
        out += [{"step": at, "eval_loss": 1.9, "eval_runtime": runtime} for at, runtime in evals if at == step]
    return Metrics(tuple(out))


PLAN = {"eval_rows": 64, "eval_batches": 8, "eval_every": 0, "final_eval": True, "rows_per_step": 4}


def test_without_an_eval_split_the_eta_is_the_steps_left():
    assert records().eta_seconds(5, 10) == pytest.approx(5.0)


def test_before_the_first_eval_its_cost_is_estimated_from_the_step_time():
    metrics = records(plan=PLAN)
    estimate = 1.0 * 64 / 4 * EVAL_ROW_SHARE
    assert metrics.seconds_per_eval() == pytest.approx(estimate)
    assert metrics.eta_seconds(5, 10) == pytest.approx(5.0 + estimate)   # the final eval after step 10


def test_a_measured_eval_replaces_the_estimate_and_is_not_counted_as_step_time():
    metrics = records(plan={**PLAN, "eval_every": 3}, evals=[(3, 12.0)])
    assert metrics.seconds_per_step() == pytest.approx(1.0)   # the 12 s eval between steps 3 and 4 left out
    # 5 steps left, evals at 6 and 9, and the final one after step 10 (10 is not a multiple of 3)
    assert metrics.evals_left(5, 10) == 3
    assert metrics.eta_seconds(5, 10) == pytest.approx(5.0 + 3 * 12.0)
    assert records(plan={**PLAN, "eval_every": 5}, evals=[(5, 12.0)]).evals_left(5, 10) == 1  # 10: no extra


def test_the_final_eval_after_the_last_step_is_not_eta_zero():
    metrics = records(steps=10, plan=PLAN, evals=[(4, 20.0)])
    assert metrics.eta_seconds(10, 10) == pytest.approx(20.0)     # the last step ran, its eval not begun yet
    assert metrics.eta_seconds(10, 10, eval_done=2, eval_total=8) == pytest.approx(15.0)
    assert metrics.eta_seconds(10, 10, eval_done=8, eval_total=8) == 0.0
    done = Metrics(metrics.records + ({"step": 10, "eval_loss": 1.8, "eval_runtime": 19.0},))
    assert done.eta_seconds(10, 10) == 0.0                         # evaluated: saving is all that is left
