"""``latentode-eval ckpt_path=...``: the test metrics of a checkpoint, from its run's config.

    latentode-eval ckpt_path=outputs/train/<run>/checkpoints/last.ckpt
    latentode-eval ckpt_path=... 'overrides=[data.batch_size=200]'

The run's resolved-at-use config is read from the run directory (the nearest ``.hydra/config.yaml``
above the checkpoint); data, model and LightningModule are rebuilt from it and the checkpoint's
weights are tested. Validation/test posterior samples are seeded per batch, so the numbers equal
the ones ``latentode-train`` printed for the same checkpoint. ``overrides`` change the run's
config (unknown keys are errors); results go to this evaluation's own output directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
    quiet_known_warnings,
    run_test,
    setup_runtime,
)

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
    return run_test(cfg, trainer, module, datamodule, None, label=str(ckpt))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    """Entry point of ``latentode-eval`` (Hydra parses the command line)."""
    quiet_known_warnings()
    evaluate(cfg)


if __name__ == "__main__":
    main()
