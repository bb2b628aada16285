"""A misspelt override on the command line: Hydra's error is followed by a line naming the key (or
group option) and the closest existing one, computed against the composed config; the exit
status stays 1, and a failure inside the run is never re-composed into a suggestion."""

from __future__ import annotations

import pytest
from test_cli import TINY, run_main

from latentode.cli import train as train_cli
from latentode.cli import typos

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")


def failing_main(argv: list[str], monkeypatch, capsys) -> str:
    """Run ``latentode-train`` in process; it must exit with status 1. Returns stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(train_cli, ["latentode-train", *argv], monkeypatch)
    assert stop.value.code == 1
    return capsys.readouterr().err


@pytest.mark.parametrize(("override", "meant"), [
    ("trainer.max_epoch=1", "trainer.max_epochs"),
    ("trainr.max_epochs=1", "trainer.max_epochs"),
    ("model.encoder.hiden=4", "model.encoder.hidden"),
    ("hydra.run.dri=x", "hydra.run.dir"),
    ("trainr.max_epoch=1", "trainer.max_epochs"),
])
def test_misspelt_key_names_the_closest_one(override, meant, tmp_path, monkeypatch, capsys):
    err = failing_main([override, f"hydra.run.dir={tmp_path}"], monkeypatch, capsys)
    assert "Could not override" in err  # Hydra's own message stays
    key = override.split("=")[0]
    assert f"latentode-train: {key} is not a key of the config; did you mean {meant}?" in err
    if not key.startswith("hydra."):  # its advice to append the key with + is answered
        assert f"+{key}=" in err.splitlines()[-1] and "refuses" in err.splitlines()[-1]
    assert not (tmp_path / ".hydra").exists()


def test_key_of_the_chosen_group_is_suggested_from_the_composed_config(monkeypatch, capsys):
    """The candidates come from the config as composed: odernn's own keys, not latent_ode's."""
    err = failing_main(["model=odernn", "model.latent=3", "trainer.fast_dev_run=true"],
                       monkeypatch, capsys)
    assert "model.latent is not a key of the config; did you mean model.latents?" in err
    # gen_units is a key of the default model (latent_ode), not of gru_dt's
    err = failing_main(["model=gru_dt", "model.gen_units=3"], monkeypatch, capsys)
    assert "model.gen_units is not a key of the config; did you mean model.gru_units?" in err
    err = failing_main(["model=gru_dt", "model.zzzzzz=3"], monkeypatch, capsys)
    assert "model.zzzzzz is not a key of the config. (" in err and "did you mean" not in err


@pytest.mark.parametrize("piece", ["ema", "model_checkpoint", "progress_bar"])
def test_a_default_callback_is_not_an_option_that_replaces_the_set(piece, monkeypatch, capsys):
    """callbacks=ema replaced the whole default set with the average alone: no best or last
    checkpoint (nothing to resume from) and a test of the last weights. The pieces are parts of
    the default set now; selecting one says so and names the ways to change it."""
    err = failing_main([f"callbacks={piece}"], monkeypatch, capsys)
    assert (f"latentode-train: callbacks={piece} is not an option: {piece} is one of the default "
            f"callbacks") in err and f"~callbacks.{piece}" in err and "callbacks=ema_only" in err
    assert f"+callbacks/parts={piece}" in err
    # a list of pieces (Hydra's raw "Could not load 'callbacks/ema'" alone)
    err = failing_main([f"callbacks=[{piece},lr_monitor]"], monkeypatch, capsys)
    assert (f"callbacks=[{piece},lr_monitor] names pieces of the default set "
            f"(conf/callbacks/parts/), not options of callbacks; those pieces alone: "
            f"callbacks=none '+callbacks/parts=[{piece},lr_monitor]'") in err
    err = failing_main([f"callbacks=[default,{piece}]"], monkeypatch, capsys)  # mixed
    assert (f"callbacks=[default,{piece}]: {piece} is a piece of the default set "
            "(conf/callbacks/parts/), not an option of callbacks") in err
    assert "callbacks=none '+callbacks/parts=" not in err
    from latentode import LatentODEForecaster  # the forecaster's overrides: the same hint

    with pytest.raises(Exception, match=rf"LatentODEForecaster: callbacks={piece} is not an "
                                        r"option"):
        LatentODEForecaster([f"callbacks={piece}"])


def test_the_default_callbacks_and_the_average_alone_compose():
    from test_cli import compose_train

    assert set(compose_train([]).callbacks) == {"model_checkpoint", "last_checkpoint",
                                                "progress_bar", "lr_monitor", "ema"}
    assert set(compose_train(["callbacks=early_stopping"]).callbacks) == {
        "model_checkpoint", "last_checkpoint", "progress_bar", "lr_monitor", "ema",
        "early_stopping"}
    assert set(compose_train(["callbacks=ema_only"]).callbacks) == {"ema"}
    assert compose_train(["callbacks.ema.decay=0.9"]).callbacks.ema.decay == 0.9


def test_misspelt_group_option_names_the_closest_option(monkeypatch, capsys):
    err = failing_main(["model=hoper_latent_ode"], monkeypatch, capsys)
    assert "Could not find 'model/hoper_latent_ode'" in err
    assert ("latentode-train: hoper_latent_ode is not an option of the config group model; did "
            "you mean model=hopper_latent_ode?") in err
    err = failing_main(["model/encoder=rn", "seed=1"], monkeypatch, capsys)
    assert "did you mean model/encoder=rnn?" in err


def test_a_sweep_names_its_misspelt_value(tmp_path, monkeypatch, capsys):
    err = failing_main(["-m", "model=latent_ode,hoper_latent_ode", "trainer.max_epochs=1",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], monkeypatch, capsys)
    assert "did you mean model=hopper_latent_ode?" in err
    err = failing_main(["-m", "trainer.max_epoch=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                       monkeypatch, capsys)
    assert "trainer.max_epoch is not a key of the config; did you mean trainer.max_epochs?" in err
    assert not list((tmp_path / "sweep").glob("[0-9]*"))  # no job ran


def test_failure_inside_the_run_is_not_recomposed(tmp_path, monkeypatch, capsys):
    """``+trainer.max_epoch=1`` composes, and train() refuses it (its own message): no second
    composition, no suggestion of Hydra's kind after it."""
    def never(*args, **kwargs):
        raise AssertionError("a failed run was re-composed")

    monkeypatch.setattr(typos, "composition_hint", never)
    err = failing_main(["+trainer.max_epoch=1", *TINY, f"hydra.run.dir={tmp_path}"],
                       monkeypatch, capsys)
    assert "trainer.max_epoch is not an option of lightning.pytorch.Trainer" in err
    assert "is not a key of the config" not in err


def test_hint_is_quiet_when_the_overrides_compose():
    assert typos.composition_hint("train", ["model.latents=3", "seed=1"]) is None
    assert typos.composition_hint("train", ["model.latents=(", "seed=1"]) is None  # syntax
    assert typos.composition_hint("train", ["model.zzzzzz=3"]) == (
        "latentode-train: model.zzzzzz is not a key of the config. (Hydra's advice to append it "
        "with +model.zzzzzz=... would not help: latentode-train refuses settings it does not "
        "read; see the keys with --cfg job.)")
    assert typos.composition_hint("train", ["~model.latnts"]) == (
        "latentode-train: model.latnts is not a key of the config; did you mean model.latents?")
    # latentode-eval's config (ckpt_path: ???, a value still missing, is a key all the same)
    assert typos.composition_hint("eval", ["ckpt_pth=x"], "latentode-eval", False) == (
        "latentode-eval: ckpt_pth is not a key of the config; did you mean ckpt_path?")


@pytest.mark.parametrize(("command", "override", "meant"), [
    ("eval", "ckpt_pth=x", "ckpt_path"),
    ("predict", "horizn=3", "horizon"),
])
def test_eval_and_predict_name_the_closest_option(command, override, meant, monkeypatch, capsys):
    from latentode.cli import evaluate as eval_cli
    from latentode.cli import predict as predict_cli

    module = {"eval": eval_cli, "predict": predict_cli}[command]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(module, [f"latentode-{command}", override], monkeypatch)
    assert stop.value.code == 1
    last = capsys.readouterr().err.splitlines()[-1]
    key = override.split("=")[0]
    # their own keys only; no advice about "+" (they refuse foreign keys with overrides=[...])
    assert last == (f"latentode-{command}: {key} is not a key of the config; "
                    f"did you mean {meant}?")


@pytest.mark.parametrize(("override", "hint"), [
    ("experiments=hopper_interp", "did you mean experiment=hopper_interp?"),
    ("hparam_search=periodic_optuna", "did you mean hparams_search=periodic_optuna?"),
    # both groups offer latent_ode: naming only module (the closest key) would train the
    # default model
    ("modle=latent_ode", "did you mean module=latent_ode or model=latent_ode?"),
    ("modle=hopper_odernn", "did you mean model=hopper_odernn?"),
])
def test_misspelt_group_name_names_the_groups_that_offer_the_value(override, hint, monkeypatch,
                                                                   capsys):
    err = failing_main([override], monkeypatch, capsys)
    assert err.splitlines()[-1] == (f"latentode-train: {override.split('=')[0]} is not a config "
                                    f"group; {hint}")


@pytest.mark.parametrize(("override", "said"), [
    ("data.batch_size=abc", "data.batch_size='abc' must be a whole number (int)"),
    ("model.latents=4.5", "model.latents=4.5 must be a whole number (int)"),
    ("model.encoder.hidden=true", "model.encoder.hidden=True must be a whole number (int)"),
    ("seed=abc", "seed='abc' must be a whole number (or null)"),
    ("module.kl_rate=1.5", "module.kl_rate must be in [0, 1]"),
    ("module.optimizer.lr=-1", "module.optimizer: Invalid learning rate: -1"),
])
def test_a_value_of_the_wrong_type_or_range_is_refused_in_one_line(override, said, tmp_path,
                                                                  monkeypatch, capsys):
    """Each ended in a traceback from deep inside (a comparison of str and int, torch's empty(),
    int('abc'), Adamax's constructor inside fit) or trained a wrong objective (kl_rate)."""
    err = failing_main([*TINY, override, f"hydra.run.dir={tmp_path}"], monkeypatch, capsys)
    assert f"latentode-train: error: {said}" in err
    assert "Traceback" not in err


def test_the_default_configs_pass_the_value_checks():
    """The type check refused the default callbacks' ``refresh_rate: auto`` (a word the code
    resolves before instantiating), so a plain ``latentode-train`` failed; the tests'
    TINY overrides set it to 0 and hid it."""
    from test_cli import compose_train

    for overrides in ([], ["model=odernn"], ["model=gru_dt"], ["model=rnn_vae"],
                      ["experiment=periodic_extrap"], ["trainer=ddp_cpu"]):
        cfg = compose_train([*overrides, "model.input_dim=3"])  # (set from the data)
        for group in ("data", "model", "module", "trainer", "callbacks", "logger"):
            train_cli.check_arguments(cfg.get(group), group)


def test_whole_counts_written_as_floats_pass_the_type_check():
    """EarlyStopping's patience: 1e3 (or inf) worked and was refused as not a whole number."""
    from test_cli import compose_train

    cfg = compose_train(["callbacks=early_stopping", "callbacks.early_stopping.patience=1e3"])
    train_cli.check_arguments(cfg.callbacks, "callbacks")
    cfg = compose_train(["callbacks=early_stopping", "callbacks.early_stopping.patience=inf"])
    train_cli.check_arguments(cfg.callbacks, "callbacks")


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_help_lists_their_own_options_not_trains_groups(
        command, monkeypatch, capsys):
    """latentode-eval --help listed latentode-train's config groups (model=, callbacks=, ...),
    none of which it takes: its help is its own config and how to change the run's."""
    from latentode.cli import evaluate as eval_cli
    from latentode.cli import predict as predict_cli

    module = eval_cli if command == "eval" else predict_cli
    capsys.readouterr()
    try:
        run_main(module, [f"latentode-{command}", "--help"], monkeypatch)
    except SystemExit as stop:
        assert stop.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith(f"latentode-{command} ")
    assert "Configuration groups" not in out and "experiment:" not in out
    assert "overrides=[\"data.batch_size=100\"]" in out and f"task_name: {command}" in out


def test_a_sweep_with_cfg_job_is_refused_without_a_traceback(monkeypatch, capsys):
    """-m --cfg job: Hydra raised a ValueError, shown as a traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(train_cli, ["latentode-train", "-m", "--cfg", "job", "model.latents=4,8"],
                 monkeypatch)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "latentode-train: Only one of --run, --multirun, --cfg" in err
    assert "model.latents=8 --cfg job" in err and "Traceback" not in err
    capsys.readouterr()
    with pytest.raises(SystemExit):  # -m --info: Hydra's refusal, without --cfg's advice
        run_main(train_cli, ["latentode-train", "-m", "--info"], monkeypatch)
    err = capsys.readouterr().err
    assert "Only one of --run" in err and "--cfg job" not in err


def test_a_sweep_key_of_only_some_options_is_named_as_such(monkeypatch, capsys):
    """-m model/encoder=odernn,rnn model.encoder.ode_units=50: the rnn encoder has no ode_units,
    and the hint sent the user to another key ("did you mean model.encoder.z0_units?")."""
    err = failing_main(["-m", "model/encoder=odernn,rnn", "model.encoder.ode_units=50"],
                       monkeypatch, capsys)
    assert ("latentode-train: model.encoder.ode_units is a key of the config with "
            "model/encoder=odernn but not with model/encoder=rnn: a sweep (-m) composes every "
            "combination") in err and "did you mean" not in err.splitlines()[-1]
    err = failing_main(["-m", "model/encoder=rnn,odernn", "model.encoder.ode_units=50"],
                       monkeypatch, capsys)  # the other order: the first combination fails
    assert ("model.encoder.ode_units is a key of the config with model/encoder=odernn but not "
            "with model/encoder=rnn") in err
    err = failing_main(["-m", "model=odernn,latent_ode", "model.gen_units=8"], monkeypatch,
                       capsys)
    assert ("model.gen_units is a key of the config with model=latent_ode but not with "
            "model=odernn") in err
    # a long sweep of values (no group): the closest key still, in the compositions' budget
    err = failing_main(["-m", "model.latents=range(1,30)", "model.gen_unit=3"], monkeypatch,
                       capsys)
    assert "model.gen_unit is not a key of the config; did you mean model.gen_units?" in err
    err = failing_main(["-m", "model/encoder=odernn,rnn", "model.encoder.ode_unit=50"],
                       monkeypatch, capsys)  # a typo in a sweep: still the closest key
    assert "model.encoder.ode_unit is not a key of the config; did you mean " in err


def test_a_reader_that_leaves_early_is_not_an_error(monkeypatch):
    """`latentode-train --help | head`: Python's BrokenPipeError traceback after the lines."""
    import os

    def app():
        raise BrokenPipeError(32, "Broken pipe")

    saved = os.dup(1)
    try:
        with pytest.raises(SystemExit) as stop:
            typos.run_app(app, "train", "latentode-train")
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert stop.value.code == 141


def test_an_option_the_target_takes_gets_the_plus_advice(monkeypatch, capsys):
    """trainer.precision is a Trainer argument the config does not list: the hint said + would
    not help, where +trainer.precision=... is the documented way and works."""
    err = failing_main(["trainer.precision=bf16-mixed"], monkeypatch, capsys)
    assert ("latentode-train: trainer.precision is not in the config, but "
            "lightning.pytorch.Trainer takes precision: add it with +trainer.precision=...") in err
    assert "would not help" not in err
    from test_cli import compose_train

    assert compose_train(["+trainer.precision=bf16-mixed"]).trainer.precision == "bf16-mixed"
