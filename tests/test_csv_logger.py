"""RunCSVLogger: a run dir's metrics.csv is continued on resume, moved aside on a new run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from latentode.lit import RunCSVLogger


def write_rows(path: Path, rows: list[dict[str, object]]) -> None:
    fields = sorted(set().union(*rows))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# an earlier run: epochs 0 and 1 (steps 0-3, checkpoint at global step 4), its test row at step
# 4, then a stopped continuation that logged two steps of epoch 2 past that checkpoint
EARLIER = [
    {"epoch": 0, "step": 0, "train/loss_step": 5.0},
    {"epoch": 0, "step": 1, "train/loss_step": 4.0, "val/mse": 0.9},
    {"epoch": 1, "step": 3, "train/loss_step": 3.0, "val/mse": 0.8},
    {"epoch": 2, "step": 4, "test/mse": 0.7},
    {"epoch": 2, "step": 4, "train/loss_step": 2.5},
    {"epoch": 2, "step": 5, "train/loss_step": 2.4},
]


def logger_for(tmp_path: Path) -> RunCSVLogger:
    return RunCSVLogger(save_dir=tmp_path, name="", version="", flush_logs_every_n_steps=1)


def test_resume_keeps_history_drops_rows_past_the_checkpoint_and_appends(tmp_path):
    write_rows(tmp_path / "metrics.csv", EARLIER)
    logger = logger_for(tmp_path)
    logger.continue_from(4)
    logger.log_hyperparams({"lr": 0.01})
    logger.log_metrics({"epoch": 2, "train/loss_step": 2.0, "train/new_metric": 1.0}, step=4)
    logger.save()
    rows = read_rows(tmp_path / "metrics.csv")
    assert [(r["step"], r["train/loss_step"]) for r in rows] == [
        ("0", "5.0"), ("1", "4.0"), ("3", "3.0"), ("4", ""), ("4", "2.0")]
    assert rows[3]["test/mse"] == "0.7"  # an earlier test result stays
    assert rows[-1]["train/new_metric"] == "1.0"  # a new column widens the header
    assert rows[0]["train/new_metric"] == ""
    assert not list(tmp_path.glob("metrics.*.csv"))


def test_test_only_run_keeps_every_row(tmp_path):
    write_rows(tmp_path / "metrics.csv", EARLIER)
    logger = logger_for(tmp_path)
    logger.continue_from(None)
    logger.log_metrics({"test/mse": 0.6}, step=0)
    logger.save()
    rows = read_rows(tmp_path / "metrics.csv")
    assert len(rows) == len(EARLIER) + 1
    assert rows[-1]["test/mse"] == "0.6"


def test_new_run_moves_an_earlier_file_aside_never_deletes_it(tmp_path, caplog):
    write_rows(tmp_path / "metrics.csv", EARLIER)
    write_rows(tmp_path / "metrics.1.csv", EARLIER[:1])
    logger = logger_for(tmp_path)
    logger.log_metrics({"train/loss_step": 9.0}, step=0)
    logger.save()
    assert len(read_rows(tmp_path / "metrics.2.csv")) == len(EARLIER)
    assert len(read_rows(tmp_path / "metrics.1.csv")) == 1
    assert [r["train/loss_step"] for r in read_rows(tmp_path / "metrics.csv")] == ["9.0"]
    assert "moved to" in caplog.text and "metrics.2.csv" in caplog.text


def test_continue_from_is_checked(tmp_path):
    logger = logger_for(tmp_path)
    with pytest.raises(ValueError, match="non-negative int"):
        logger.continue_from(-1)
    logger.log_metrics({"a": 1.0}, step=0)
    with pytest.raises(RuntimeError, match="before the first log"):
        logger.continue_from(3)


# a run trained in chunks: chunk 1 ended at step 2 (its test row there), chunk 2 at step 4
CHUNKED = [
    {"epoch": 0, "step": 0, "train/loss_step": 5.0},
    {"epoch": 0, "step": 1, "train/loss_step": 4.0, "val/mse": 0.9},
    {"epoch": 1, "step": 2, "test/mse": 0.8},
    {"epoch": 1, "step": 2, "train/loss_step": 3.0},
    {"epoch": 1, "step": 3, "train/loss_step": 2.9, "val/mse": 0.75},
    {"epoch": 2, "step": 4, "test/mse": 0.7, "test/mse_seen": 0.6},
]


def test_retest_at_the_same_step_replaces_that_steps_test_row(tmp_path):
    """A chunk rerun whose checkpoint already reached max_epochs trains nothing and tests again
    at the checkpoint's step: its test row replaces that step's earlier one; every other row
    (chunk 1's test row included) stays in place."""
    write_rows(tmp_path / "metrics.csv", CHUNKED)
    logger = logger_for(tmp_path)
    logger.continue_from(4)
    logger.log_hyperparams({"lr": 0.01})
    logger.log_metrics({"epoch": 2, "test/mse": 0.65, "test/mse_seen": 0.55}, step=4)
    logger.save()
    rows = read_rows(tmp_path / "metrics.csv")
    assert [(r["step"], r["test/mse"], r["train/loss_step"]) for r in rows] == [
        ("0", "", "5.0"), ("1", "", "4.0"), ("2", "0.8", ""), ("2", "", "3.0"), ("3", "", "2.9"),
        ("4", "0.65", "")]
    assert rows[-1]["test/mse_seen"] == "0.55" and rows[-1]["epoch"] == "2"
    # a resume that trains on tests at a later step: the earlier test rows stay
    logger = logger_for(tmp_path)
    logger.continue_from(4)
    logger.log_metrics({"epoch": 2, "train/loss_step": 2.5}, step=4)
    logger.log_metrics({"epoch": 3, "test/mse": 0.6}, step=6)
    logger.save()
    tested = [(r["step"], r["test/mse"]) for r in read_rows(tmp_path / "metrics.csv")
              if r["test/mse"]]
    assert tested == [("2", "0.8"), ("4", "0.65"), ("6", "0.6")]


def test_rerun_of_a_finished_chunk_keeps_one_test_row(tmp_path, monkeypatch):
    """The command line: the same chunk run twice in its run dir (ckpt_path=last)."""
    pytest.importorskip("hydra")
    from test_cli import TINY, run_main

    from latentode.cli import train as train_cli

    run = tmp_path / "run"
    argv = ["latentode-train", f"hydra.run.dir={run}", "ckpt_path=last", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2", *TINY, "plots.n_series=0"]
    run_main(train_cli, argv, monkeypatch)
    first = read_rows(run / "metrics.csv")
    run_main(train_cli, argv, monkeypatch)  # nothing left to train: tested again
    again = read_rows(run / "metrics.csv")
    assert [r for r in again if r.get("test/mse")] == [r for r in first if r.get("test/mse")]
    assert len([r for r in again if r.get("test/mse")]) == 1
    assert again == first  # the same weights tested the same: nothing else changed
