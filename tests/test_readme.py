"""The README's Python examples run as written, given the inputs they name (func, df, ...).

Each ```python block is found by a line it contains and run with a small prelude; a block
without an entry here fails, so a new example cannot go untested.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def wide_frame(ids: list[str], seed: int = 0) -> pd.DataFrame:
    """Irregular series, two channels, the second missing at ~30% of times."""
    rng = np.random.default_rng(seed)
    rows = []
    for sid in ids:
        for tv in np.sort(rng.uniform(0.0, 5.0, 20)):
            rows.append({"series_id": sid, "time": tv, "x": np.sin(tv) + 0.1 * rng.normal(),
                         "y": np.cos(tv) if rng.random() < 0.7 else np.nan})
    return pd.DataFrame(rows)


def replace_once(code: str, old: str, new: str) -> str:
    assert code.count(old) == 1, f"README example changed: {old!r} not found once; update the test"
    return code.replace(old, new)


def check_solver(ns: dict) -> None:
    assert ns["ys"].shape == (5, 4, 3)
    torch.testing.assert_close(ns["ys"][-1], ns["y0"] * torch.exp(torch.tensor(-1.0)),
                               rtol=1e-2, atol=1e-3)


def check_data(ns: dict) -> None:
    back = ns["ds"].to_dataframe()
    df = ns["df"].sort_values(["series_id", "time"])
    np.testing.assert_allclose(back["x"].to_numpy(), df["x"].to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(back["y"].isna().to_numpy(), df["y"].isna().to_numpy())
    assert ns["dm"] is not None


def check_plain_loop(ns: dict) -> None:
    assert torch.isfinite(ns["loss"])


def check_forecaster(ns: dict) -> None:
    pred, filled, paths = ns["pred"], ns["filled"], ns["paths"]
    assert {"mean", "q0.05", "q0.5", "q0.95"} <= set(pred.columns)
    assert pred[["mean", "q0.05", "q0.95"]].notna().all().all()
    assert (pred["q0.05"] <= pred["q0.95"]).all()
    assert filled[["x", "y"]].notna().all().all()
    assert len(paths) > 0
    assert Path("a.png").stat().st_size > 0
    assert (Path("forecaster") / "weights.pt").exists()


def plain_loop() -> dict:
    """The namespace the plain-loop example leaves (a trained model, its data and scaler)."""
    ns: dict = {}
    exec(compile(example("from latentode.models import LatentODE"), "README.md plain loop",
                 "exec"), ns)
    return ns


def check_from_model(ns: dict) -> None:
    assert {"mean", "q0.05", "q0.5", "q0.95"} <= set(ns["pred"].columns)
    assert ns["pred"]["mean"].notna().all() and ns["fc"].calibration.split == "val"


# marker line -> (prelude names, text replacements, check)
EXAMPLES = {
    "from latentode.solvers import odeint, SolverStats": (
        lambda: {"func": lambda t, y: -y, "y0": torch.randn(4, 3), "t": torch.linspace(0, 1, 5)},
        [], check_solver),
    "from latentode.data import from_dataframe, Interpolation, LatentODEDataModule": (
        lambda: {"df": wide_frame(["a", "b", "c"])}, [], check_data),
    "from latentode.models import LatentODE": (lambda: {}, [], check_plain_loop),
    "from latentode import LatentODEForecaster": (
        lambda: {"train_df": wide_frame(list("abcdefgh")),
                 "df": wide_frame(["a", "b"], seed=1)},
        [('"trainer.max_epochs": 50', '"trainer.max_epochs": 2')], check_forecaster),
    "fc = LatentODEForecaster.from_model(": (plain_loop, [], check_from_model),
}


def example(marker: str) -> str:
    found = [b for b in python_blocks() if marker in b]
    assert len(found) == 1, f"README: {len(found)} python examples contain {marker!r}"
    return found[0]


def test_every_python_example_has_a_runner() -> None:
    for block in python_blocks():
        assert any(m in block for m in EXAMPLES), (
            f"README python example without a runner in {__file__}:\n{block}")


@pytest.mark.parametrize("marker", list(EXAMPLES))
def test_readme_example_runs(marker: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the forecaster example writes forecaster/ and a.png
    prelude, replacements, check = EXAMPLES[marker]
    code = example(marker)
    for old, new in replacements:
        code = replace_once(code, old, new)
    torch.manual_seed(0)
    ns = prelude()
    exec(compile(code, f"README.md example ({marker})", "exec"), ns)
    check(ns)


GROUPS = ("experiment", "model/encoder", "model", "trainer", "data", "hparams_search",
          "callbacks", "logger", "solver", "module")


def test_config_choices_named_in_the_docs_exist() -> None:
    conf = README.parent / "conf"
    docs = [README, *sorted((README.parent / "docs").glob("*.md"))]
    pattern = re.compile(r"(?<![\w./+~])(" + "|".join(GROUPS) + r")=([a-z][a-z_0-9]*)(?![\w*{])")
    missing = []
    for doc in docs:
        for group, name in pattern.findall(doc.read_text()):
            if name.startswith("my_"):  # a user's own config in the docs' examples
                continue
            if not (conf / group / f"{name}.yaml").exists():
                missing.append(f"{doc.name}: {group}={name}")
    assert not missing, f"config choices named in the docs with no conf/ file: {missing}"


# configs among which every dotted key the docs name must exist in at least one
COMPOSED = [[], ["experiment=csv", "data.dataset.path=x.csv"], ["experiment=hopper_interp"],
            ["experiment=physionet_interp"], ["experiment=periodic_extrap"], ["experiment=co2"],
            ["model=rnn_vae"], ["model=odernn"], ["model=gru_dt"], ["trainer=ddp"]]


def test_config_keys_named_in_the_docs_exist() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    text = "".join(p.read_text() for p in [README, *(README.parent / "docs").glob("*.md")])
    keys = set(re.findall(r"(?<![\w./+~])((?:model|data|trainer|module|callbacks|solver|logger)"
                          r"\.[A-Za-z_0-9.]+)=", text))
    assert len(keys) > 20  # the pattern still finds the docs' overrides
    with initialize_config_dir(str(README.parent / "conf"), version_base=None):
        cfgs = [OmegaConf.to_container(compose("train", overrides=o), resolve=False)
                for o in COMPOSED]

    def has(cfg: object, key: str) -> bool:
        for part in key.split("."):
            if not isinstance(cfg, dict) or part not in cfg:
                return False
            cfg = cfg[part]
        return True

    missing = sorted(k for k in keys if not any(has(c, k) for c in cfgs))
    assert not missing, f"config keys named in the docs that no composed config has: {missing}"
