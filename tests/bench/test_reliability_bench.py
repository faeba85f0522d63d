"""The reliability benchmark's plumbing: a fresh workspace per probe, a probe that cannot run counts as not
held with the reason, and the table (the probes themselves are tests/reliability)."""
from bench import reliability


def test_a_probe_that_cannot_run_is_a_row_that_did_not_hold(tiny_model_dir, tmp_path, workspace):
    outcome = reliability.run_probe("redis-2", "many_workers", {"workers": 2, "count": 1, "redis": True},
                                    tmp_path, tiny_model_dir, redis_url=None)
    assert not outcome.held and outcome.problems == ["redis-server is not installed"]
    assert (tmp_path / "redis-2" / "models" / "tiny-llama").is_dir(), "each probe gets its own workspace"
    text = reliability.markdown([("redis-2", outcome)])
    assert "0 of 1 probes held" in text and "| redis-2 | redis-2 | NO " in text


def test_the_matrix_covers_every_save_point_and_restart_mode():
    rows = reliability.matrix(root_only_ok=True)
    for point in reliability.SAVE_POINTS:
        assert {f"save-{point}", f"save-{point}-group", f"save-{point}-pid1"} <= set(rows)
    assert {"group-pid1", "trainer-pid1", "app-pid1", "disk-full", "sqlite-3", "redis-3"} <= set(rows)
    assert "disk-full" not in reliability.matrix(root_only_ok=False)
