"""The quick start's main job runs end to end: prints metrics and writes its plot."""

from __future__ import annotations

import math

from latentode.demo import main


def test_demo_runs_and_writes_plot(tmp_path, capsys):
    main(["--iters", "5", "--obs", "30", "--segment", "5", "--batch", "4", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    png = tmp_path / "spiral_fit.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = {
        line.split()[0]: float(line.split()[1])
        for line in out.splitlines()
        if line.startswith("  ") and len(line.split()) == 2
    }
    for key in ("train_mse", "interp_test_mse", "extrap_mse", "nfe_forward_per_iter"):
        assert math.isfinite(metrics[key])
    assert metrics["nfe_forward_per_iter"] > 0 and metrics["nfe_backward_per_iter"] > 0
