"""The on-call face: one obvious command, one clear line when something is wrong."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from embedloop.flows.cli import main


def test_retrain_requires_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["retrain"])
    assert exit_info.value.code == 2
    assert "--reason" in capsys.readouterr().err


def test_status_on_a_fresh_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "champion    none yet" in out and "live index  none" in out


def test_search_without_a_champion_is_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "anything", "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no champion yet" in err and "Traceback" not in err


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_with_a_wrong_log_path_fails_fast_and_clearly(
        tmp_path: Path, tiny_beir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["retrain", "--reason", "typo", "--home", str(tmp_path),
                 "--logs", str(tmp_path / "nope"), "--corpus", str(tiny_beir / "corpus.jsonl")])
    assert code == 1
    err = capsys.readouterr().err
    assert "no log files found" in err and "Traceback" not in err
    assert not (tmp_path / ".embedloop" / "indexes").exists()  # nothing was built


@pytest.mark.usefixtures("prefect_harness")
def test_rollback_with_nothing_to_roll_back(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A refusal, not a failure: exit 3, one line, no alert (nothing is wrong)."""
    assert main(["rollback", "--reason", "3am", "--home", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("embedloop rollback:")]
    assert line.startswith("embedloop rollback: refused: ") and "nothing to roll back" in line
    assert "ERROR" not in err


def test_validate_is_a_dry_run_with_counts(sim_logs: Path, tiny_beir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "quarantine.parquet"
    code = main(["validate", str(sim_logs), "--corpus", str(tiny_beir / "corpus.jsonl"),
                 "--home", str(tmp_path), "--out", str(out_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2400 rows in 2 files" in out and "batch would be accepted" in out
    assert f"corpus      {tiny_beir / 'corpus.jsonl'} (200 documents)" in out
    assert "batch-001.jsonl (1200 rows), batch-002.jsonl (1200 rows)" in out
    assert "not read    manifest.json (not a log format" in out
    quarantined = pd.read_parquet(out_file)
    assert f"accepted, {len(quarantined)} quarantined" in out and len(quarantined) > 0
    for code, rows in quarantined.groupby("reason_code", sort=False):  # each with an example
        first = rows.iloc[0]
        assert f"{code:<20} {len(rows):>6}   e.g. {first['source']}:{first['line']} " in out
    assert not (tmp_path / ".embedloop").exists()  # a dry run records nothing


def test_validate_names_what_went_wrong(sim_logs: Path, tiny_beir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The wrong corpus, a file of other column names, a format it does not read."""
    other = tmp_path / "other.jsonl"
    other.write_text('{"_id": "x1", "title": "t", "text": "an unrelated document"}\n')
    code = main(["validate", str(sim_logs / "batch-001.jsonl"), "--corpus", str(other),
                 "--home", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and f"are not in {other}: is it the corpus" in out

    (tmp_path / "renamed.csv").write_text("id,time,q\ne1,2026-03-01T12:00:05Z,aspirin\n")
    main(["validate", str(tmp_path / "renamed.csv"), "--corpus", str(other),
          "--home", str(tmp_path)])
    assert "[embedloop.column_map] id = \"event_id\"" in capsys.readouterr().out

    (tmp_path / "logs.bin").write_bytes(b"\x00")
    assert main(["validate", str(tmp_path / "logs.bin"), "--corpus", str(other),
                 "--home", str(tmp_path)]) == 1
    assert ".bin is not a log format embedloop reads" in capsys.readouterr().err
