"""`lorastudio data check`: exit codes, one JSON object with --json, one sentence on stderr."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import data as data_cmd

ROOT = Path(__file__).resolve().parents[3]


def check(*argv):
    parser = argparse.ArgumentParser()
    data_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "check", *map(str, argv)])
    return args.handler(args)


def write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat(i):
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def test_json_output_and_exit_codes(tmp_path, capsys):
    path = write(tmp_path, [chat(i) for i in range(12)])
    assert check(path, "--stage", "sft", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "messages" and data["rows"] == 12 and data["usable_rows"] == 12
    assert data["stages"]["sft"]["usable"] and not data["stages"]["dpo"]["usable"]
    for key in ("errors", "warnings", "token_lengths", "over_max_length"):
        assert key in data
    assert check(path, "--stage", "dpo", "--json") == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert "chosen" in data["errors"][0]["message"]
    assert captured.err.count("\n") == 1 and "DPO needs a chosen and a rejected answer" in captured.err


def test_text_output_names_the_row(tmp_path, capsys):
    path = write(tmp_path, [chat(i) for i in range(12)] + ["{oops"])
    assert check(path, "--stage", "sft") == 1
    captured = capsys.readouterr()
    assert "data.jsonl, row 13: invalid JSON" in captured.out
    assert captured.err.startswith("error: data.jsonl, row 13")


def test_missing_file_and_pickle_are_one_sentence(tmp_path, capsys):
    assert check(tmp_path / "nope.jsonl") == 1
    assert "does not exist" in capsys.readouterr().err
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(b"\x80\x04.")
    assert check(pkl, "--json") == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "refused" in json.loads(captured.out)["errors"][0]["message"]


@pytest.mark.slow
def test_model_flag_measures_tokens(tmp_path, capsys, tokenizer):
    # `tokenizer` comes from the bundled model, which the workspace fixture links into this test's home
    path = write(tmp_path, [chat(i) for i in range(12)])
    assert check(path, "--model", "smollm2-135m-instruct", "--max-length", "34", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["token_lengths"]) >= {"min", "median", "p95", "max"}
    assert data["over_max_length"] == {"max_length": 34, "rows": 12, "answer_lost": 0}
    assert data["warnings"][0]["count"] == 12
    # without --model the bundled model is used when it is ready
    assert check(path, "--max-length", "20", "--json") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["over_max_length"]["answer_lost"] == 12
    assert "only 0 rows keep part of their answer" in data["errors"][0]["message"]


def test_without_model_lengths_are_skipped_when_none_is_ready(tmp_path, capsys):
    path = write(tmp_path, [chat(i) for i in range(12)])
    assert check(path, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["token_lengths"] is None and data["over_max_length"] is None


def test_python_dash_m_cli(tmp_path):
    path = write(tmp_path, [chat(i) for i in range(3)])
    env = {**os.environ, "LORASTUDIO_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "cli", "data", "check", str(path), "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "only 3 usable rows" in json.loads(done.stdout)["errors"][0]["message"]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def data_cli(*argv):
    parser = argparse.ArgumentParser()
    data_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *map(str, argv)])
    return args.handler(args)


def test_register_with_a_name_then_list_and_check_by_name(tmp_path, capsys):
    path = write(tmp_path, [chat(i) for i in range(12)])
    assert data_cli("register", path, "--name", "my-chats") == 0
    dataset_id = capsys.readouterr().out.strip()
    assert dataset_id.startswith("ds-")
    assert data_cli("list", "--json") == 0
    items = json.loads(capsys.readouterr().out)
    assert isinstance(items, list)
    mine = next(i for i in items if i["id"] == dataset_id)
    assert mine["name"] == "my-chats" and mine["named"] is True and mine["rows"] == 12
    assert data_cli("list") == 0
    assert f"{dataset_id}  my-chats  12 rows" in capsys.readouterr().out
    assert check("my-chats", "--stage", "sft") == 0
    capsys.readouterr()
    other = write(tmp_path, [chat(i + 100) for i in range(12)], name="other.jsonl")
    assert data_cli("register", other, "--name", "my-chats") == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: dataset name 'my-chats' is already used by")
    assert len(captured.err.strip().splitlines()) == 1


def test_register_refuses_an_unusable_file_with_one_sentence(tmp_path, capsys):
    path = write(tmp_path, [{"body": "plain"} for _ in range(12)])
    assert data_cli("register", path) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot tell the format" in err and len(err.strip().splitlines()) == 1


def test_lorastudio_data_list_json_via_python_dash_m(tmp_path):
    env = dict(os.environ, LORASTUDIO_HOME=str(tmp_path / "home"))
    path = write(tmp_path, [chat(i) for i in range(12)])
    registered = subprocess.run([sys.executable, "-m", "cli", "data", "register", str(path), "--name", "sub"],
                                capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert registered.returncode == 0, registered.stderr
    listed = subprocess.run([sys.executable, "-m", "cli", "data", "list", "--json"], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert [i["name"] for i in json.loads(listed.stdout) if i["named"] and not i["demo"]] == ["sub"]
