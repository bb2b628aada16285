"""``latentode-eval ckpt_path=...``: the test metrics of a checkpoint, from its run's config.

    latentode-eval ckpt_path=outputs/train/<run>/checkpoints/last.ckpt
    latentode-eval ckpt_path=... 'overrides=[data.batch_size=200]'

The run's resolved-at-use config is read from the run directory (the nearest ``.hydra/config.yaml``
above the checkpoint); data, model and LightningModule are rebuilt from it and the checkpoint's
weights are tested. Validation/test posterior samples are seeded per batch, so the numbers equal
the ones ``latentode-train`` printed for the same checkpoint. ``overrides`` change the run's
config (unknown keys are errors); results go to this evaluation's own output directory.

Beside the metrics of ``latentode-train``, the evaluation reports ``test/coverage90``: the
fraction of held-out test points (targets the encoder did not see) whose value lies in the central
90% interval (5th to 95th percentile) of the posterior predictive distribution, estimated from
``coverage.n_samples`` posterior samples per series. The predictive distribution is that of an
observation: each sampled path plus Gaussian noise of the model's ``obs_std`` (the likelihood the
model is trained with); ``coverage.noise=false`` scores the paths alone. About 0.9 is calibrated;
far less means over-confident intervals. It is printed and written to ``test_metrics.json`` under
``"coverage"`` (``"metrics"`` keeps exactly the keys ``latentode-train`` writes, so the two files
compare key for key).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from latentode.cli import config_dir
from latentode.cli.train import (
    build_datamodule,
    build_group,
    build_model,
    build_module,
    format_metrics,
    output_dir,
    quiet_known_warnings,
    run_test,
    setup_runtime,
)
from latentode.forecast.coverage import check_level, interval_hits

log = logging.getLogger(__name__)


def find_run_config(ckpt_path: Path) -> Path:
    """The ``.hydra/config.yaml`` of the run that wrote ``ckpt_path`` (searched upwards)."""
    for parent in ckpt_path.parents:
        candidate = parent / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no .hydra/config.yaml in any directory above {ckpt_path}; latentode-eval needs the "
        "checkpoint inside the output directory of the latentode-train run that wrote it."
    )


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """``key=value`` overrides on ``cfg`` in struct mode: an unknown key is an error."""
    OmegaConf.set_struct(cfg, True)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value.")
        key, raw = item.split("=", 1)
        if OmegaConf.select(cfg, key, throw_on_missing=False, default=KeyError) is KeyError:
            raise KeyError(f"override {item!r}: the run's config has no key {key!r}.")
        OmegaConf.update(cfg, key, yaml.safe_load(raw), merge=False)


def coverage_name(level: float) -> str:
    """``test/coverage90`` for level 0.9."""
    return f"test/coverage{100 * level:g}"


@torch.no_grad()
def heldout_coverage(model: torch.nn.Module, datamodule: Any, level: float = 0.9,
                  n_samples: int = 100, seed: int = 0, noise: bool = True) -> float:
    """Empirical coverage of the central ``level`` posterior predictive interval on the test
    loader's held-out points (``target_mask & ~encoder_mask``), pooled over batches; samples are
    seeded per batch, so the number is reproducible. NaN when no point is held out."""
    level = check_level(level)
    device = next(model.parameters()).device
    obs_std = float(getattr(model, "obs_std", 0.0) or 0.0) if noise else 0.0
    was_training = model.training
    model.eval()
    hits = count = 0
    try:
        for index, batch in enumerate(datamodule.test_dataloader()):
            batch = batch.to(device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed * 1_000_003 + index)
                pred = model(batch.times, batch.values, batch.encoder_mask,
                             n_samples=n_samples).pred
                if obs_std > 0:
                    pred = pred + obs_std * torch.randn_like(pred)
            h, c = interval_hits(pred, batch.values, batch.target_mask & ~batch.encoder_mask,
                                 level)
            hits, count = hits + h, count + c
    finally:
        model.train(was_training)
    return hits / count if count else float("nan")


def report_coverage(eval_cfg: DictConfig, cfg: DictConfig, module: Any, datamodule: Any,
                    metrics: dict[str, float]) -> dict[str, float]:
    """Compute ``test/coverage90`` (or the configured level), print it, add it to
    ``test_metrics.json`` under ``"coverage"``; returns ``metrics`` with it."""
    options = eval_cfg.get("coverage") or {}
    if not options.get("enabled", True):
        return metrics
    level = check_level(options.get("level", 0.9))
    samples = int(options.get("n_samples", 100))
    noise = bool(options.get("noise", True))
    value = heldout_coverage(module.model, datamodule, level, samples,
                          seed=int(cfg.module.get("eval_seed", 0) or 0), noise=noise)
    name = coverage_name(level)
    print(format_metrics({name: value}, f"posterior predictive coverage ({samples} samples, "
                                        f"observation noise {'in' if noise else 'out'})"),
          flush=True)
    path = output_dir(cfg) / "test_metrics.json"
    if path.is_file():
        record = json.loads(path.read_text())
        record["coverage"] = {name: value, "level": level, "n_samples": samples,
                              "noise": noise}
        path.write_text(json.dumps(record, indent=2) + "\n")
    return {**metrics, name: value}


def evaluate(eval_cfg: DictConfig) -> dict[str, float]:
    """Test ``eval_cfg.ckpt_path`` with the data and model of its run; returns the metrics."""
    ckpt = Path(str(eval_cfg.ckpt_path)).expanduser().resolve()
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} does not exist.")
    config_path = find_run_config(ckpt)
    log.info("run config: %s", config_path)
    cfg = OmegaConf.load(config_path)
    apply_overrides(cfg, list(eval_cfg.get("overrides") or []))
    with open_dict(cfg):
        cfg.paths = eval_cfg.paths  # outputs of this evaluation go to its own directory
        cfg.threads = eval_cfg.get("threads", cfg.get("threads"))
        if not eval_cfg.get("plot", True):
            cfg.plots = {"n_series": 0}
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    module = build_module(cfg, model, datamodule)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])  # strict: a model that differs is an error
    log.info("weights of epoch %s (global step %s) loaded", state.get("epoch"),
             state.get("global_step"))
    progress = [c for c in build_group(cfg.get("callbacks")) if "ProgressBar" in type(c).__name__]
    trainer = instantiate(cfg.trainer, callbacks=progress, logger=False,
                          enable_checkpointing=False,
                          default_root_dir=str(eval_cfg.paths.output_dir))
    metrics = run_test(cfg, trainer, module, datamodule, None, label=str(ckpt))
    return report_coverage(eval_cfg, cfg, module, datamodule, metrics)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    """Entry point of ``latentode-eval`` (Hydra parses the command line)."""
    quiet_known_warnings()
    evaluate(cfg)


if __name__ == "__main__":
    main()
