"""`lorastudio eval`: the acceptance test on the bundled model's quickstart job, through the command a user runs:
the adapter answers its held-out rows better than the base, the forgetting section has its KL and changed-answer
share, the shipped lm-eval task ran for both; and bad input gets one sentence and exit 1."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


@pytest.mark.e2e
def test_quickstart_report_says_the_adapter_got_better_and_what_moved(quickstart_job):
    result = run_cli("eval", quickstart_job, "--json", "--benchmarks", "studio_arith", "--max-rows", "8",
                     "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert "ETA" in result.stderr and "[100%]" in result.stderr
    values = {(m["section"], m["name"]): m["values"] for s in report["sections"].values() for m in s["metrics"]}

    f1, exact, loss = values["task", "token_f1"], values["task", "exact_match"], values["task", "loss"]
    assert f1["adapter"] > f1["base"] + 0.3, f1
    assert exact["adapter"] > exact["base"], exact
    assert loss["adapter"] < loss["base"] - 1.0, loss
    rows = report["sections"]["task"]["rows"]
    assert any("Nova" in row["answers"]["adapter"] for row in rows)
    assert not any("Nova" in row["answers"]["base"] for row in rows)

    kl, changed = values["forgetting", "kl_per_token"], values["forgetting", "changed_answers"]
    assert kl["base"] == 0.0 and kl["adapter"] > 0, kl
    assert 0 < changed["adapter"] <= 1, changed
    assert len(report["sections"]["forgetting"]["rows"]) == 8

    arith = {name: v for (section, name), v in values.items() if section == "benchmarks"}
    assert arith and all(set(v) == {"base", "adapter"} for v in arith.values()), arith
    assert "formats" not in report["sections"]           # the identity demo has no tools, JSON or <think>

    saved = json.loads(Path(os.environ["LORASTUDIO_HOME"], "runs", quickstart_job, "eval.json").read_text("utf-8"))
    assert saved["sections"]["task"]["metrics"] == report["sections"]["task"]["metrics"]
    for key, figure in (("token F1", f1), ("exact match", exact), ("loss", loss), ("KL", kl), ("changed", changed)):
        print(f"quickstart report: {key} {figure}")
    print(f"quickstart report: benchmarks {arith}; {report['seconds']} s")

    text = run_cli("eval", quickstart_job, "--no-forgetting", "--max-rows", "2", "--max-new-tokens", "4")
    assert text.returncode == 0, text.stderr[-2000:]
    assert "exact match (held-out rows): base" in text.stdout and "eval.json" in text.stdout


@pytest.mark.slow
def test_bad_input_gets_one_sentence_and_exit_1(quickstart_job, tmp_path):
    missing = run_cli("eval", "no-such-job")
    assert missing.returncode == 1 and "no job 'no-such-job'" in missing.stderr
    assert "Traceback" not in missing.stderr
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café crème brûlée\n".encode("latin-1") * 4)
    bad_text = run_cli("eval", quickstart_job, "--no-task", "--no-forgetting", "--no-formats", "--text", str(latin))
    assert bad_text.returncode == 1 and "UTF-8" in bad_text.stderr and "Traceback" not in bad_text.stderr
