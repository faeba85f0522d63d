"""The metrics writer after a resume: the lost attempt's steps are dropped, elapsed time goes on."""
from __future__ import annotations

import json

from backend.jobs.callbacks import MetricsCallback
from backend.metrics import read_records


def test_a_resumed_run_keeps_each_step_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "elapsed_s": 2.0 * s}) for s in range(1, 8)]
    path.write_text("\n".join(lines) + '\n{"step": 8, "lo')   # the attempt was killed mid-line at step 8
    writer = MetricsCallback(path, resumed_at_step=5)
    assert [r["step"] for r in read_records(path)] == [1, 2, 3, 4, 5]
    assert writer.elapsed_before == 10.0
    assert path.read_text().endswith("\n")
    MetricsCallback(path, resumed_at_step=0)
    assert read_records(path) == [], "a restart from scratch starts the metrics again"
