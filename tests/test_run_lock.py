"""One ``latentode-train`` at a time per run directory (:mod:`latentode.cli.lock`)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
from test_cli import TINY, run_main

from latentode.cli import train as train_cli
from latentode.cli.lock import LOCK_FILE, RunDirInUseError, run_dir_lock

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")


def hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding ``run``'s lock until killed (as a training run would)."""
    code = textwrap.dedent(f"""
        import time
        from latentode.cli.lock import run_dir_lock
        with run_dir_lock({str(run)!r}):
            print("held", flush=True)
            time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_into_a_directory_in_use_is_refused_and_the_first_kept(
        tmp_path, monkeypatch, capsys):
    # two commands training into one directory overwrote each other's checkpoints and
    # metrics without a word; the second now stops before it builds anything, and the first
    # run's .hydra files (which Hydra had rewritten for the second) are put back
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    first = "seed: 1  # the first run's config\n"
    (run / ".hydra" / "config.yaml").write_text(first)
    log = "[the first run's log line]\n"
    (run / "train.log").write_text(log)
    holder = hold_lock(run)
    try:
        with pytest.raises(SystemExit) as stop:
            run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}",
                                 "trainer.max_epochs=1", *TINY], monkeypatch)
        assert stop.value.code == 1
        err = capsys.readouterr().err
        assert f"{run} is in use by another latentode-train (pid {holder.pid} on " in err
        assert "hydra.run.dir=..." in err
        assert (run / ".hydra" / "config.yaml").read_text() == first
        assert not (run / "checkpoints").exists()
        # Hydra wrote nothing there: no .hydra files of this command's, and no lines in the
        # first run's log (its file handler went to the first run's train.log)
        assert sorted(p.name for p in (run / ".hydra").iterdir()) == ["config.yaml"]
        assert (run / "train.log").read_text() == log
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: its lock file stays behind
        holder.wait()
    assert (run / LOCK_FILE).is_file()
    # a lock file left by a killed process does not block: the system dropped its lock
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=1",
                         *TINY], monkeypatch)
    assert json.loads((run / "test_metrics.json").read_text())["epochs"] == 1
    assert not (run / LOCK_FILE).exists()  # removed when the run ends


def test_a_directory_found_in_use_before_hydra_wrote_is_refused_even_once_free(tmp_path):
    """The command kept its .hydra files and log out of a directory in use; if the other run
    ends before this one's lock is taken, training there would leave a run without them."""
    from latentode.cli.lock import keep_out_if_in_use

    assert not keep_out_if_in_use(tmp_path)  # no lock file: free (and none created)
    assert not (tmp_path / LOCK_FILE).exists()
    holder = hold_lock(tmp_path)
    try:
        assert keep_out_if_in_use(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    refused = pytest.raises(RunDirInUseError, match=rf"in use by another latentode-train "
                                                    rf"\(pid {holder.pid} on .*option=\.\.\.")
    with refused, run_dir_lock(tmp_path, "option"):
        pass
    with run_dir_lock(tmp_path):  # remembered once: a later command trains there
        pass


def test_the_lock_names_its_holder_and_is_free_again_after_it(tmp_path):
    with run_dir_lock(tmp_path):
        text = (tmp_path / LOCK_FILE).read_text()
        assert text.startswith(f"pid {os.getpid()} on ")
        held = rf"pid {os.getpid()} on .*, started "
        with pytest.raises(RunDirInUseError, match=held), run_dir_lock(tmp_path):
            pass
    with run_dir_lock(tmp_path):  # released: taken again
        pass
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "RANK", "SLURM_PROCID"])
def test_the_other_processes_of_a_data_parallel_run_share_the_first_ones_directory(
        tmp_path, monkeypatch, variable):
    # Lightning's DDP launcher re-runs the command with LOCAL_RANK=1 in the same directory
    with run_dir_lock(tmp_path):
        monkeypatch.setenv(variable, "1")
        with run_dir_lock(tmp_path):
            pass
        monkeypatch.setenv(variable, "0")
        with pytest.raises(RunDirInUseError), run_dir_lock(tmp_path):
            pass


def test_a_sweep_job_refused_there_writes_nothing_into_the_other_runs_directory(
        tmp_path, monkeypatch):
    # two searches sharing a sweep dir can pick the same job directory: the refused job wrote
    # job_status.json "failed" into the other run's directory (a review)
    sweep = tmp_path / "sweep"
    job = sweep / "x"
    (job / ".hydra").mkdir(parents=True)
    holder = hold_lock(job)
    try:
        with pytest.raises(SystemExit) as stop:  # one failed job: exit status 1
            run_main(train_cli, ["latentode-train", "-m", f"hydra.sweep.dir={sweep}",
                                 "hydra.sweep.subdir=x", "seed=5", "trainer.max_epochs=1",
                                 *TINY], monkeypatch)
        assert stop.value.code == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not (job / "job_status.json").exists()
    with open(sweep / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "failed"
    assert "RunDirInUseError" in row["error"] and "is in use by another" in row["error"]
    assert "(hydra.sweep.dir=...)" in row["error"]  # not hydra.run.dir, which no sweep reads


class Intruder(L.Callback):
    """Rewrites the run's config mid-training, as a refused sweep job's Hydra does."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        (self.path / ".hydra" / "config.yaml").write_text("seed: 5  # another command's\n")


def test_a_run_puts_back_its_config_files_that_another_command_rewrote(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=1",
                         "+callbacks.intruder._target_=test_run_lock.Intruder",
                         f"+callbacks.intruder.path={run}", *TINY], monkeypatch)
    written = (run / ".hydra" / "config.yaml").read_text()
    assert "another command" not in written and "intruder" in written
    assert "config.yaml had been rewritten by another command" in (run / "train.log").read_text()


def test_the_hint_names_the_option_that_chose_the_directory(tmp_path):
    with run_dir_lock(tmp_path, "paths.output_dir"), pytest.raises(
            RunDirInUseError, match=r"train into another directory \(paths\.output_dir=\.\.\.\)"
    ), run_dir_lock(tmp_path, "paths.output_dir"):
        pass
