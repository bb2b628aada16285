"""Text files are UTF-8 on every platform: on Windows Python's default is the ANSI code page
(cp1252 on Western systems) until 3.15, which cannot hold ``SpO₂`` and mangles ``Á``. Simulated
here by a sitecustomize that makes cp1252 the default of ``open`` and ``io.TextIOWrapper``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SITE = '''
import builtins, io
_open = io.open
def _cp_open(file, mode="r", buffering=-1, encoding=None, *a, **k):
    if "b" not in mode and encoding in (None, "locale"):
        encoding = "cp1252"
    return _open(file, mode, buffering, encoding, *a, **k)
builtins.open = io.open = _cp_open
class _TW(io.TextIOWrapper):  # fsspec wraps its binary files in io.TextIOWrapper(...)
    def __init__(self, buffer, encoding=None, *a, **k):
        super().__init__(buffer, "cp1252" if encoding in (None, "locale") else encoding, *a, **k)
io.TextIOWrapper = _TW
'''


def run_cp1252(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=300)


def vitals(path: Path, channel: str) -> None:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(10):
        t = np.sort(rng.uniform(0, 10, 12))
        frames.append(pd.DataFrame({"series_id": f"p{i}", "time": t, channel: 95 + np.sin(t),
                                    "hr": 70 + np.cos(t)}))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(path, index=False)


def test_training_with_a_non_ascii_path_and_channel_under_a_cp1252_default(tmp_path):
    # .hydra/*.yaml (UTF-8) were read back in the platform's encoding: 'Á' crashed the run;
    # Lightning's CSV writer could not write the column test/mse_data/SpO₂
    data = tmp_path / "Ángel" / "vitals.csv"
    vitals(data, "SpO₂")
    run = tmp_path / "run"
    code = (
        "import sys\n"
        "from latentode.cli import train\n"
        f"sys.argv = ['latentode-train', 'experiment=csv', 'data.dataset.path=\"{data}\"',\n"
        f"            'hydra.run.dir={run}', 'trainer.max_epochs=1', 'data.batch_size=4',\n"
        "            'model.latents=3', 'model.gen_units=8', 'model.encoder.hidden=6',\n"
        "            'model.encoder.z0_units=8', 'model.encoder.ode_units=8',\n"
        "            'plots.n_series=1', 'plots.n_samples=2',\n"
        "            'callbacks.progress_bar.refresh_rate=0']\n"
        "train.main()\n")
    done = run_cp1252(tmp_path, code)
    assert done.returncode == 0, done.stderr[-3000:]
    header = (run / "metrics.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "test/mse_data/SpO₂" in header
    import torch

    from latentode.cli.checkpoints import RUN_RECORD

    record = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)[RUN_RECORD]
    assert "Ángel" in record["files"]["config.yaml"]  # not a mis-decoded 'Ã\x81ngel'


@pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")
def test_saved_forecaster_loads_with_a_non_ascii_channel_under_a_cp1252_default(tmp_path):
    data = tmp_path / "vitals.csv"
    vitals(data, "température")
    code = (
        "import pandas as pd\n"
        "from latentode import LatentODEForecaster\n"
        f"df = pd.read_csv({str(data)!r})\n"
        "m = LatentODEForecaster({'trainer.max_epochs': 1, 'model.latents': 3,\n"
        "                         'model.gen_units': 8, 'model.encoder.hidden': 6})\n"
        "m.fit(df, log_channels=['température'])\n"
        f"m.save({str(tmp_path / 'saved')!r})\n"
        f"back = LatentODEForecaster.load({str(tmp_path / 'saved')!r})\n"
        "print('loaded')\n")
    done = run_cp1252(tmp_path, code)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-3000:]
    assert "température" in (tmp_path / "saved" / "config.yaml").read_text(encoding="utf-8")
