"""Subset conditioning (``latentode.forecast.subsets``): each posterior sample conditioned on a
random subset of the history drawn as the training task drew the encoder's points."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from latentode.data import Extrapolation, Folds, Interpolation, Mixed
from latentode.forecast import calibration
from latentode.forecast.calibration import NoiseCalibration, calibrate_forecaster, subsets_mode
from latentode.forecast.subsets import Subsets, subset_forward
from latentode.models import LatentODE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_subsets_keep_the_tasks_share_of_the_seen_points_only():
    rng = np.random.default_rng(0)
    seen = rng.random((6, 40)) < 0.6
    seen[5] = False  # a row showing nothing keeps nothing
    masks = Subsets(Interpolation(fraction=0.5)).masks(seen, 7, np.random.default_rng(1))
    assert masks.shape == (7, 6, 40)
    assert not (masks & ~seen).any()  # only seen points
    n = seen.sum(1)
    expected = np.where(n > 0, np.maximum(1, np.round(0.5 * n)), 0)
    np.testing.assert_array_equal(masks.sum(2), np.broadcast_to(expected, (7, 6)))
    assert len({masks[k, 0].tobytes() for k in range(7)}) == 7  # different subsets
    again = Subsets(Interpolation(fraction=0.5)).masks(seen, 7, np.random.default_rng(1))
    np.testing.assert_array_equal(masks, again)  # the seed decides
    counted = Subsets(Interpolation(count=3)).masks(seen, 2, np.random.default_rng(1))
    np.testing.assert_array_equal(counted.sum(2), np.broadcast_to(np.minimum(n, 3), (2, 6)))


def test_a_historys_subsets_ignore_rows_that_show_nothing():
    """A z0 row or a stepped-through point before, between or after the observations does
    not change which observations a subset keeps (a series' two jobs draw the same)."""
    seen = np.array([True, True, False, True, True, True, False, True])
    subsets = Subsets(Interpolation(fraction=0.5), draws=4)
    plain = subsets.masks(seen[seen][None], 4, np.random.default_rng(5))[:, 0]
    padded = subsets.masks(seen[None], 4, np.random.default_rng(5))[:, 0]
    np.testing.assert_array_equal(padded[:, seen], plain)
    assert not padded[:, ~seen].any()


def test_the_subsets_a_training_task_describes():
    assert Subsets.of_task(Interpolation(count=50)).task == Interpolation(count=50)
    spread = Mixed(fraction=0.75, fraction_spread=0.25)
    assert Subsets.of_task(spread).task == spread.interpolation()
    assert Subsets.of_task(Extrapolation(fraction=0.5, subsample=0.1)).task == Interpolation(
        fraction=0.1)
    for every_point in (Interpolation(fraction=1.0), Extrapolation(fraction=0.5), Folds(),
                        None):
        assert Subsets.of_task(every_point) is None
    assert Subsets.of_task(Interpolation(fraction=0.9, fraction_spread=0.1)) is not None
    data = Subsets(Interpolation(fraction=0.5, fraction_spread=0.2), draws=3).to_json()
    assert Subsets.from_json(data) == Subsets(Interpolation(fraction=0.5, fraction_spread=0.2),
                                              draws=3)
    assert Subsets.from_json(None) is None
    with pytest.raises(ValueError, match=r"draws must be a positive integer, got 0"):
        Subsets(Interpolation(count=2), draws=0)
    with pytest.raises(TypeError, match=r"must be a latentode.data.Interpolation"):
        Subsets(Folds())  # type: ignore[arg-type]
    assert Subsets(Interpolation(count=2), draws=10).count(4) == 4  # at most one per sample


@pytest.mark.parametrize("samples", [6, 7, 2])
def test_each_sample_is_the_model_on_its_subset(samples):
    """Sample ``s`` of row ``b`` is exactly the model conditioned on ``mask[b]`` within subset
    ``s % K``, with ``z0_noise[s, b]``, whatever ``S`` (``K`` divides it or not)."""
    torch.manual_seed(0)
    model = LatentODE(input_dim=2, latents=3, gen_units=8).double().eval()
    rng = np.random.default_rng(0)
    times = torch.from_numpy(np.sort(rng.uniform(0, 2, 12)))
    values = torch.from_numpy(rng.normal(size=(3, 12, 2)))
    mask = torch.from_numpy(rng.random((3, 12, 2)) < 0.7)
    mask[:, 0] = True
    pred_times = torch.stack([times[:6], times[2:8] - times[2], times[6:] - times[6]])
    pred_times = pred_times - pred_times[:, :1]
    subsets = Subsets(Interpolation(fraction=0.5), draws=3)
    k = subsets.count(samples)
    masks = subsets.masks(mask.any(-1).numpy(), k, np.random.default_rng(2))
    eps = torch.from_numpy(rng.normal(size=(samples, 3, 3)))
    with torch.no_grad():
        pred, logits = subset_forward(model, masks, times, values, mask, eps,
                                      pred_times=pred_times)
        assert pred.shape == (samples, 3, 6, 2) and logits is None
        for s in range(samples):
            for b in range(3):
                alone = mask[b:b + 1] & torch.from_numpy(masks[s % k, b])[None, :, None]
                want = model(times, values[b:b + 1], alone, pred_times=pred_times[b:b + 1],
                             z0_noise=eps[s:s + 1, b:b + 1]).pred[0, 0]
                torch.testing.assert_close(pred[s, b], want, rtol=1e-9, atol=1e-9)


def _noise(std: float, rms: float | None = None) -> NoiseCalibration:
    return NoiseCalibration(std=[std], obs_std=0.01, count=[100], points="heldout", split="val",
                            residual_rms=[std if rms is None else rms])


LATENT = LatentODE(input_dim=1, latents=2, gen_units=4)


@pytest.fixture
def stubbed(monkeypatch):
    """``calibrate_forecaster`` on stubs: the folds noise 0.3 conditioned on every point, 0.1 on
    subsets (``better``) or 0.4, 0.1 at the training task's masks; what it asked for recorded.
    ``state["wider"]``: subsets with a lower noise (their paths spread more) but a higher
    residual rms. ``state["leads"]``: the subsets of each forecast-curve pass (one per call:
    only the calibration returned gets one)."""
    asked: list = []
    state = {"better": True, "wider": False, "leads": []}

    def split(model, dm, n, seed, *, subsets=None, lead=True, **kwargs):
        asked.append(subsets)
        if subsets is None:
            out = _noise(0.3)
        elif state["wider"]:
            out = _noise(0.2, rms=0.5)
        else:
            out = _noise(0.1 if state["better"] else 0.4)
        return with_lead(model, dm, out, n, seed, subsets=subsets) if lead else out

    def with_lead(model, dm, base, n, seed, *, subsets=None, **kwargs):
        state["leads"].append(subsets)
        return base

    monkeypatch.setattr(calibration, "calibrate_split", split)
    monkeypatch.setattr(calibration, "with_lead_curve", with_lead)
    monkeypatch.setattr(calibration, "calibration_batches", lambda *a, **k: ([], "val"))
    monkeypatch.setattr(calibration, "calibrate_noise", lambda *a, **k: _noise(0.1))
    dm = SimpleNamespace(task=Interpolation(count=50), dataset=SimpleNamespace(channels=["v"]))
    return dm, asked, state


def test_auto_subsets_when_the_model_is_density_fragile_and_they_help(stubbed):
    dm, asked, state = stubbed
    cal, chosen, texts = calibrate_forecaster(LATENT, dm, 10, 0)
    assert chosen == Subsets(Interpolation(count=50)) and cal.std == [0.1]
    assert asked == [None, chosen]
    assert state["leads"] == [chosen]  # the curve of the plain calibration is not made for nothing
    (text,) = texts
    assert "therefore condition each posterior sample on one of 10 subsets (count=50)" in text
    assert "held-out rms 0.1 against 0.3 from all of them" in text
    state["better"] = False  # subsets that do not help are not used, and said so
    cal, chosen, texts = calibrate_forecaster(LATENT, dm, 10, 0)
    assert chosen is None and cal.std == [0.3]
    assert "did not help: held-out rms 0.4 against 0.3" in texts[0]
    assert state["leads"][-1] is None and len(state["leads"]) == 2
    # wider paths lower the moment-matched noise whatever the predictions: the error decides
    state["wider"] = True
    assert calibrate_forecaster(LATENT, dm, 10, 0)[1] is None
    asked.clear()
    cal, chosen, texts = calibrate_forecaster(LATENT, dm, 10, 0, subsets=False)
    assert chosen is None and asked == [None] and "subsets=True conditions" in texts[0]
    asked.clear()
    cal, chosen, texts = calibrate_forecaster(LATENT, dm, 10, 0, subsets="true")
    assert chosen == Subsets(Interpolation(count=50)) and asked == [chosen] and texts == []
    mine = Subsets(Interpolation(fraction=0.3), draws=4)  # given: used, no comparison
    assert calibrate_forecaster(LATENT, dm, 10, 0, subsets=mine, trained_task=False)[1] == mine
    # not the model's training task (from_model): auto never subsamples
    assert calibrate_forecaster(LATENT, dm, 10, 0, trained_task=False)[1] is None
    # a model that is not a latent ODE has none: auto passes, anything else is refused
    from latentode.models import GRUDT

    asked.clear()
    baseline = GRUDT(input_dim=1, latents=2)
    assert calibrate_forecaster(baseline, dm, 10, 0)[1] is None and None in asked
    for value in (True, "true", "TRUE", mine, Interpolation(count=5)):
        with pytest.raises(ValueError, match=r"GRUDT has none: use subsets=False"):
            calibrate_forecaster(baseline, dm, 10, 0, subsets=value)


def test_subsets_options_are_checked(stubbed):
    dm, _, _ = stubbed
    dm.task = Interpolation(fraction=1.0)  # shows every point: nothing to draw from
    with pytest.raises(ValueError, match=r"subsets=True conditions on subsets drawn as the "
                                         r"encoder's training drew them, but its task"):
        calibrate_forecaster(LATENT, dm, 10, 0, subsets=True)
    with pytest.raises(ValueError, match=r"task \(not known\) .* or name the training "):
        calibrate_forecaster(LATENT, dm, 10, 0, subsets=True, trained_task=False)
    with pytest.raises(ValueError, match=r"subsets must be one of \['auto', 'true', 'false'\]"):
        subsets_mode("sometimes")
    assert [subsets_mode(v) for v in ("Auto", "TRUE", "false", True, False)] == [
        "auto", True, False, True, False]


def test_a_wrong_subsets_value_is_refused_before_any_work():
    import pandas as pd

    from latentode import LatentODEForecaster

    frame = pd.DataFrame({"series_id": [0, 0], "time": [0.0, 1.0], "x": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"subsets must be one of"):  # not after training
        LatentODEForecaster().fit(frame, subsets="yes")
    with pytest.raises(ValueError, match=r"subsets must be one of"):  # not after the rebuild
        LatentODEForecaster.from_run("no/such/run.ckpt", subsets="yes")


def test_fewer_samples_than_subsets_are_refused_by_name():
    masks = np.ones((4, 1, 3), dtype=bool)
    with pytest.raises(ValueError, match=r"masks hold 4 subsets for 3 posterior samples"):
        subset_forward(LATENT, masks, torch.arange(3.0), torch.zeros(1, 3, 1),
                       torch.ones(1, 3, 1, dtype=torch.bool), torch.zeros(3, 1, 2))


def test_fit_refuses_subsets_that_cannot_work_before_training():
    from test_forecast import TINY, make_frame

    from latentode import LatentODEForecaster

    torch.set_num_threads(1)
    every_point = LatentODEForecaster({**TINY, "data.task.fraction": 1.0,
                                       "data.task.fraction_spread": None,
                                       "trainer.max_epochs": 1})
    with pytest.raises(ValueError, match=r"subsets=True conditions on subsets drawn as the "
                                         r"encoder's training drew them, but its task"):
        every_point.fit(make_frame(n_series=12), subsets=True)
    assert every_point.model is None  # refused before training, not after
