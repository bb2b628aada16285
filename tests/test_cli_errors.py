"""A bad input on the command line ends in latentode's message alone (status 1), not in a
traceback through Hydra; other errors keep theirs, and HYDRA_FULL_ERROR=1 keeps every one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_cli import run_main

from latentode.cli import predict as predict_cli
from latentode.cli import train as train_cli
from latentode.cli.errors import raised_by_latentode
from latentode.data import from_dataframe

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")


def bad_csv(path) -> str:
    rng = np.random.default_rng(0)
    rows = [(s, t, str(np.sin(t) + s)) for s in range(6) for t in np.sort(rng.uniform(0, 5, 6))]
    df = pd.DataFrame(rows, columns=["series_id", "time", "temp"])
    df.loc[5, "temp"] = "?"
    df.to_csv(path, index=False)
    return str(path)


def test_a_bad_csv_ends_in_its_message_and_the_run_log_keeps_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    argv = ["latentode-train", "experiment=csv", f"data.dataset.path={bad_csv(tmp_path / 'q.csv')}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    with pytest.raises(SystemExit) as stop:
        run_main(train_cli, argv, monkeypatch)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("latentode-train: error: column 'temp' has a non-numeric value '?' "
                          "(series 0, row 7)")  # the file's line 7 (pandas' row 5 before)
    assert (tmp_path / "q.csv").read_text().splitlines()[7 - 1].endswith(",?")
    assert "Traceback" not in err and "Error executing job" not in err
    assert "HYDRA_FULL_ERROR=1" in err
    logged = (tmp_path / "run" / "csv.log").read_text()
    assert "[ERROR] - latentode-train: error: column 'temp' has a non-numeric value" in logged
    # HYDRA_FULL_ERROR=1: the exception itself, for a debugger or a traceback
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="non-numeric value"):
        run_main(train_cli, argv, monkeypatch)


def test_a_constructors_check_is_one_line_too(tmp_path, monkeypatch, capsys):
    """The data module's own check reaches the command wrapped in Hydra's
    InstantiationException ("Error in call to target ..."): its message alone."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    good = tmp_path / "good.csv"
    pd.read_csv(bad_csv(good)).replace("?", "1.0").to_csv(good, index=False)
    with pytest.raises(SystemExit):
        run_main(train_cli, ["latentode-train", "experiment=csv", f"data.dataset.path={good}",
                             "data.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch)
    err = capsys.readouterr().err
    assert err.startswith("latentode-train: error: batch_size must be at least 1, got 0.")
    assert "Error in call to target" not in err


def test_a_sweeps_failed_job_does_not_stop_the_next(tmp_path, monkeypatch):
    """Jobs of -m raise as before: SystemExit from the first job had ended the whole sweep
    (no second job, no summary.csv)."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    sweep = tmp_path / "sweep"
    with pytest.raises((SystemExit, FileNotFoundError)):
        run_main(predict_cli, ["latentode-predict", "-m",
                               f"ckpt_path={tmp_path / 'a.ckpt'},{tmp_path / 'b.ckpt'}",
                               f"input={tmp_path / 'in.csv'}", f"hydra.sweep.dir={sweep}"],
                 monkeypatch)
    assert (sweep / "0").is_dir() and (sweep / "1").is_dir()
    assert (sweep / "summary.csv").is_file()


def test_predict_names_a_missing_checkpoint_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop:
        run_main(predict_cli, ["latentode-predict", f"ckpt_path={tmp_path / 'none.ckpt'}",
                               f"input={tmp_path / 'in.csv'}", f"hydra.run.dir={tmp_path}"],
                 monkeypatch)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("latentode-predict: error: checkpoint ") and "does not exist" in err
    assert "Traceback" not in err


def test_only_errors_latentode_raised_on_purpose_are_shortened():
    with pytest.raises(ValueError, match="non-numeric value") as ours:
        from_dataframe(pd.DataFrame({"series_id": [1, 1], "time": [0.0, 1.0], "x": ["1", "?"]}))
    assert raised_by_latentode(ours.value)
    with pytest.raises(ValueError) as library:
        np.zeros(3).reshape(2, 2)
    assert not raised_by_latentode(library.value)
    from latentode.cli import errors

    with pytest.raises(ValueError) as slip:  # a failed unpacking in our code is a bug: traced
        exec(compile("a, b = [1, 2, 3]", errors.__file__, "exec"))  # as if at its line 1
    assert not raised_by_latentode(slip.value)


def test_warnings_of_the_commands_show_no_location_of_ours():
    """Under ``python -m latentode.cli.train`` a data warning was logged as ``<frozen
    runpy>:198: UserWarning: ...`` (every frame is latentode's or a library's, so the
    outermost is runpy's), and elsewhere with a source line of ours, read as the problem's."""
    import os

    import latentode
    from latentode.utils.stack import format_warning_for_commands

    ours = os.path.join(os.path.dirname(latentode.__file__), "data", "datamodule.py")
    for filename in ("<frozen runpy>", ours, "/venv/bin/latentode-train"):
        assert format_warning_for_commands("scale it", UserWarning, filename, 198,
                                           "warn(...)") == "UserWarning: scale it\n"
    # a user's own module (a _target_ of theirs) keeps where it warned
    shown = format_warning_for_commands("odd", RuntimeWarning, "/home/u/my_decoder.py", 7,
                                        "x = 1")
    assert shown == "/home/u/my_decoder.py:7: RuntimeWarning: odd\n  x = 1\n"


def test_a_command_run_in_process_leaves_the_warning_display_as_it_was(tmp_path, monkeypatch):
    """A notebook calling a command's main() kept its warnings going into that run's log file,
    formatted without locations, for the rest of the session (a review)."""
    import logging
    import warnings

    shown, formatted = warnings.showwarning, warnings.formatwarning
    handlers = logging.getLogger().handlers[:]
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={tmp_path / 'run'}",
                         "trainer.fast_dev_run=true", "data.dataset.n_series=20",
                         "data.dataset.n_points=30"], monkeypatch)
    assert warnings.showwarning is shown and warnings.formatwarning is formatted
    # and later logging does not go on into the finished run's log file
    assert logging.getLogger().handlers == handlers
    logging.getLogger("after").warning("a line of the calling process")
    assert "a line of the calling process" not in (tmp_path / "run" / "train.log").read_text()
