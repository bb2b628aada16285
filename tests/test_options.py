"""Settings the command line tools would ignore are refused by name, with the fix.

Hydra accepts any ``+key=value``; before these checks ``latentode-eval +data.dataset.n_series=
200`` returned the run's own metrics as if of other data, and ``latentode-train +sede=3`` or
``+callbacks.early_stopping.patience=3`` (early stopping not selected) ran another experiment.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from test_cli import TINY, compose_train

from latentode.cli import evaluate as eval_cli
from latentode.cli import predict as predict_cli
from latentode.cli import runs
from latentode.cli import train as train_cli


@pytest.mark.parametrize(("extra", "match"), [
    (["+sede=3"], r"sede=3: sede is not a setting of latentode-train and nothing in the config "
                  r"reads it\. Did you mean seed\?"),
    (["+ckpt_pth=last"], r"Did you mean ckpt_path\?"),
    (["+trainr.max_epochs=5"], r"trainr\.max_epochs=5: trainr is not a setting .* Did you mean "
                               r"trainer\?"),
    (["+plots.n_serie=1"], r"plots\.n_serie is not a plot setting \(they are: n_series, "
                           r"n_samples\)\. Did you mean plots\.n_series\?"),
    (["+callbacks.early_stoping.patience=3"],
     r"callbacks\.early_stoping names no _target_, so no such callbacks entry is selected and "
     r"the settings would do nothing\. Did you mean callbacks\.early_stopping\?"),
    (["+callbacks.early_stopping.patience=3"],
     r"Select it first: callbacks=early_stopping .*, then set callbacks\.early_stopping\.\*"),
])
def test_train_refuses_settings_nothing_reads(extra, match):
    with pytest.raises(ValueError, match=match):
        train_cli.train(compose_train([*TINY, *extra]))


def test_a_piece_of_the_default_callbacks_set_without_it_names_how_to_add_it():
    from latentode.cli.options import refuse_unread_settings

    with pytest.raises(ValueError, match=r"Add it first: \+callbacks/parts=ema "
                                         r"\(conf/callbacks/parts/ema\.yaml"):
        refuse_unread_settings(compose_train(["callbacks=none", "+callbacks.ema.decay=0.9"]))


def test_variables_an_experiment_reads_and_selected_entries_are_kept():
    """``observed_fraction`` (hopper experiments) is read by ``${observed_fraction}``; a
    selected callback takes its settings; the groups' and train.yaml's own keys pass."""
    from latentode.cli.options import refuse_unread_settings

    for overrides in (["experiment=hopper_interp", "observed_fraction=0.3"],
                      ["experiment=csv", "data.dataset.path=x.csv"],
                      [*TINY, "callbacks=early_stopping", "callbacks.early_stopping.patience=3"],
                      ["callbacks=none"], ["callbacks=none", "+callbacks/parts=ema"]):
        refuse_unread_settings(compose_train(overrides))


def test_a_search_config_passes_the_unread_settings_check():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # the [sweeps] extra
    from latentode.cli.options import refuse_unread_settings

    refuse_unread_settings(compose_train([*TINY, "hparams_search=periodic_optuna"]))


def test_eval_and_predict_refuse_run_settings_given_as_their_own():
    """``latentode-eval +data.dataset.n_series=200`` was taken and ignored; the run's config is
    changed with ``overrides=[...]``, which the error spells out."""
    cfg = OmegaConf.create({"ckpt_path": "missing.ckpt", "overrides": [],
                            "data": {"dataset": {"n_series": 200}}, "model": {"latents": 3}})
    with pytest.raises(ValueError, match=r"latentode-eval got data\.dataset\.n_series=200, "
                                         r"model\.latents=3: latentode-eval rebuilds the run "
                                         r"from its own saved config; to change it, pass "
                                         r"'overrides=\[\"data\.dataset\.n_series=200\","
                                         r"\"model\.latents=3\"\]'\. Its options: .*ckpt_path"
                       ) as refused:
        eval_cli.evaluate(cfg)
    # the advice parses as Hydra reads a command line (unquoted, [a.b=1] was refused by it)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    advice = str(refused.value).split("pass '")[1].split("'")[0]
    assert OverridesParser.create().parse_override(advice).value() == [
        "data.dataset.n_series=200", "model.latents=3"]
    with pytest.raises(ValueError, match=r"plott is not an option of latentode-eval; did you "
                                         r"mean plot\?"):
        eval_cli.evaluate(OmegaConf.create({"ckpt_path": "missing.ckpt", "plott": False}))
    with pytest.raises(ValueError, match=r"latentode-predict got seed=3, data\.x=1: .*did you "
                                         r"mean seed\?|latentode-predict got .*'overrides="
                                         r"\[\"data"):
        predict_cli.predict(OmegaConf.create({"input": "a.csv", "output": "b.csv", "sede": 3,
                                              "data": {"x": 1}}))


def test_a_misspelt_override_of_the_run_suggests_the_key():
    cfg = OmegaConf.create({"data": {"dataset": {"n_series": 20}}})
    with pytest.raises(ValueError, match=r"has no key 'data\.dataset\.n_serie'\. Did you mean "
                                       r"data\.dataset\.n_series\?"):
        runs.apply_overrides(cfg, ["data.dataset.n_serie=5"])
