"""The command line: list, verify (table, exit code, JSON), docs --check, bad arguments."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import matcalc_jax as mj
from matcalc_jax._cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_list_prints_every_rule(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for r in mj.rules():
        assert r.id in out and r.plain in out


def test_verify_prints_a_table_and_writes_json(capsys, tmp_path):
    path = tmp_path / "report.json"
    code = main(
        [
            "verify",
            "--rules",
            "linear,softmax",
            "--dtype",
            "float32",
            "--size",
            "3",
            "--json",
            str(path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "device: cpu" in out
    assert "d(Ax)/dx = A^T" in out
    assert "2 of 2 rules pass" in out
    data = json.loads(path.read_text())
    assert data["passed"] is True and set(data["rules"]) == {"linear", "softmax"}


def test_verify_unknown_rule_exits_2_with_the_known_ids(capsys):
    assert main(["verify", "--rules", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown rule id 'nope'" in err and "softmax" in err


def test_verify_bad_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["verify", "--size", "0"])
    assert info.value.code == 2


def test_docs_check_passes_on_the_committed_file(capsys):
    assert main(["docs", "--check", "--out", str(ROOT / "docs" / "rules.md")]) == 0


def test_docs_check_fails_on_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "rules.md"
    stale.write_text("# old\n")
    assert main(["docs", "--check", "--out", str(stale)]) == 1
    assert main(["docs", "--out", str(stale)]) == 0
    assert main(["docs", "--check", "--out", str(stale)]) == 0


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "matcalc_jax", "list"], capture_output=True, text=True, check=True
    )
    assert "chain_matrix_trace" in result.stdout
