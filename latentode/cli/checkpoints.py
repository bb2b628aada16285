"""Checkpoints that know their run: the config that wrote them, and checks before loading.

Resuming (``latentode-train ckpt_path=...``) rebuilds the model from the *command line's*
config. Forgetting one of the run's options (``model.latents=16``) used to end in a state-dict
size mismatch from deep inside Lightning; worse, Hydra had already rewritten the run's
``.hydra/config.yaml`` when resuming in place, so ``latentode-eval`` and ``latentode-predict``
then failed on that run too. Now every checkpoint carries the resolved config and the
overrides of the run that wrote it (:class:`RunRecord`), a resume whose model does not fit the
checkpoint is refused by name before training (:func:`check_resume`), and an in-place run's
config files are put back from the checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from latentode.cli.lock import LOCK_FILE

log = logging.getLogger(__name__)

RUN_RECORD = "latentode_run"
"""Key of a checkpoint's run record: ``{"config": resolved config, "overrides": [...]}``."""


HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


class RunRecord(L.Callback):
    """Writes the run's config and command-line overrides into every checkpoint, with the text
    of its ``.hydra`` files (``run_dir/.hydra``, as Hydra wrote them for this run)."""

    def __init__(self, config: DictConfig, overrides: list[str], run_dir: Path | None = None,
                 search: list[str] | None = None):
        # unresolved, as Hydra writes .hydra/config.yaml (interpolations kept); ``search``:
        # the command's hydra.searchpath overrides (a user's config directory)
        self.record: dict[str, Any] = {
            "config": OmegaConf.to_container(config, resolve=False),
            "overrides": list(overrides), "search": list(search or []), "files": {}}
        hydra_dir = None if run_dir is None else run_dir / ".hydra"
        for name in HYDRA_FILES:
            if hydra_dir is not None and (hydra_dir / name).is_file():
                self.record["files"][name] = (hydra_dir / name).read_text(encoding="utf-8")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if "data" not in self.record:  # the splits and scaler are fixed once training runs
            self.record["data"] = data_fingerprint(getattr(trainer, "datamodule", None))
        checkpoint[RUN_RECORD] = self.record


def data_fingerprint(datamodule: Any) -> dict[str, Any] | None:
    """What the run's data was at training: each split's number of series and a hash of their
    ids, and the scaler's mean and scale; ``latentode-eval``/``-predict`` rebuild the data from
    the file as it is then, and say so when it has changed (:func:`data_changes`)."""
    splits = getattr(datamodule, "splits", None)
    if not splits:
        return None
    out: dict[str, Any] = {"splits": {}}
    for name, part in splits.items():
        ids = sorted(str(i) for i in part.ids)
        digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]
        out["splits"][name] = {"series": len(ids), "ids": digest}
    scaler = getattr(datamodule, "scaler", None)
    if scaler is not None:
        out["scaler"] = {k: [float(v) for v in np.ravel(getattr(scaler, k))]
                         for k in ("mean", "scale")}
    return out


def data_changes(saved: dict[str, Any] | None, datamodule: Any) -> list[str]:
    """How the rebuilt data differs from the run's at training (empty: the same, or unknown for
    a checkpoint written before fingerprints were kept)."""
    now = data_fingerprint(datamodule)
    if not saved or now is None:
        return []
    lines = []
    for name, was in saved.get("splits", {}).items():
        current = now["splits"].get(name)
        if current is None:
            lines.append(f"{name} split: {was['series']} series at training, none now")
        elif current != was:
            same = "other series" if current["series"] == was["series"] else "now"
            lines.append(f"{name} split: {was['series']} series at training, "
                         f"{current['series']} {same}")
    for key in ("mean", "scale"):
        was, current = saved.get("scaler", {}).get(key), now.get("scaler", {}).get(key)
        if was is not None and (current is None or len(was) != len(current)
                                or not np.allclose(was, current, rtol=1e-6, atol=0.0)):
            lines.append(f"scaler {key}: {np.round(was, 4).tolist()} at training, "
                         f"{None if current is None else np.round(current, 4).tolist()} now")
    return lines


def warn_if_data_changed(saved: dict[str, Any] | None, datamodule: Any, what: str) -> None:
    """Warn that ``what`` (the metrics, the forecaster) uses data other than the run's."""
    changes = data_changes(saved, datamodule)
    if changes:
        warnings.warn(
            "the run's data, rebuilt from its config, differs from what it was trained on ("
            + "; ".join(changes) + f"): {what} use the data as it is now (series may have "
            "moved between splits, the scaler shifted). Point the run at its training data "
            "(overrides=['data.dataset.path=...']) to reproduce it.", stacklevel=3)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint ``path`` names: a file, or a run directory (its ``checkpoints/last.ckpt``,
    or its only checkpoint)."""
    ckpt = Path(path).expanduser().resolve()
    if ckpt.is_file():
        return ckpt
    if ckpt.is_dir():
        for candidate in (ckpt / "checkpoints" / "last.ckpt", ckpt / "last.ckpt"):
            if candidate.is_file():
                return candidate
        found = sorted(ckpt.rglob("*.ckpt"))
        if len(found) == 1:
            return found[0]
        listed = ", ".join(str(f.relative_to(ckpt)) for f in found[:5])
        raise FileNotFoundError(
            f"{str(ckpt)!r} is a directory without checkpoints/last.ckpt"
            + (f"; it holds {len(found)} checkpoints ({listed}): name one." if found
               else " and holds no .ckpt file (did the run save checkpoints?).")
        )
    raise FileNotFoundError(f"checkpoint {str(ckpt)!r} does not exist.")


def upgrade_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Bring the layout of earlier versions of ``module``'s submodules in ``state`` up to date,
    in place, by each one's ``upgrade_state(state, prefix)``: what ``load_state_dict`` does
    anyway, done first so that :func:`weights_mismatch` judges the tensors that will be
    loaded. Returns what was upgraded (``"name: how"``)."""
    done = []
    for name, sub in module.named_modules():
        upgrade = getattr(sub, "upgrade_state", None)
        if callable(upgrade):
            note = upgrade(state, f"{name}." if name else "")
            if note:
                done.append(f"{name}: {note}")
    return done


def weights_mismatch(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor],
                     limit: int = 4) -> str | None:
    """What keeps ``theirs`` (a checkpoint's state dict) from loading into ``ours``, in a few
    lines (None when it fits): tensors whose shapes differ, missing or unexpected ones."""
    lines = []
    for key in sorted(set(ours) | set(theirs)):
        if key not in theirs:
            lines.append(f"{key}: not in the checkpoint")
        elif key not in ours:
            lines.append(f"{key}: in the checkpoint, not in this model")
        elif tuple(ours[key].shape) != tuple(theirs[key].shape):
            lines.append(f"{key}: {list(theirs[key].shape)} in the checkpoint, "
                         f"{list(ours[key].shape)} here")
    if not lines:
        return None
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(f"  {line}" for line in lines[:limit]) + more


START_ONLY = ("model.output_bias",)
"""Settings that only choose where fresh weights start: a resumed run loads its own weights,
so their difference is not worth a word (an old run lacks output_bias; data means differ)."""


RESTORED_ON_RESUME = ("module.optimizer.", "module.param_groups")
"""Settings a resumed run takes from the checkpoint whatever the command says: Lightning loads
the optimiser's state with its param groups' ``lr``, betas, weight decay."""


def read_checkpoint(path: str | Path, weights_only: bool = False, mmap: bool = True,
                    what: str = "ckpt_path=") -> Any:
    """``torch.load`` of a checkpoint, its failures named: a missing file, and one cut short or
    damaged (a run killed while writing it: OSError or RuntimeError from inside torch), with the
    run's other checkpoints to use instead."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}{path}: no such checkpoint file") from None
    except pickle.UnpicklingError as error:
        # weights_only refuses objects of a real checkpoint (the caller explains) and garbage
        # alike: a file that is neither torch's zip nor a pickle is garbage (text, a Git LFS
        # pointer), and was told to be loaded with weights_only=False
        if weights_only and _looks_like_a_checkpoint(path):
            raise
        raise _damaged(path, what, error) from None
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as error:
        # (text in place of a checkpoint, a Git LFS pointer: KeyError from torch's old loader)
        raise _damaged(path, what, error) from None


def _looks_like_a_checkpoint(path: str | Path) -> bool:
    """Whether the file starts as torch.save writes: a zip archive, or a pickle (protocol 2+)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _damaged(path: str | Path, what: str, error: BaseException) -> ValueError:
    """The error for a checkpoint file torch cannot read, naming the run's other ones."""
    others = sorted(p.name for p in Path(path).parent.glob("*.ckpt") if p.name != Path(path).name)
    instead = (f"; the run's other checkpoints: {', '.join(others[:6])} (pass one as "
               f"ckpt_path=)" if others else "")
    first = (str(error).splitlines() or [""])[0].split(". ")[0]
    said = f"{type(error).__name__}: {first}" if first else type(error).__name__
    empty = " (an empty file)" if Path(path).is_file() and Path(path).stat().st_size == 0 else ""
    return ValueError(f"{what}{path} cannot be read as a checkpoint{empty}: the file is cut "
                      f"short or damaged (a run stopped while writing it?){instead}. torch said: "
                      f"{said}")


def config_differences(saved: dict[str, Any], cfg: DictConfig, sections: tuple[str, ...] = (
        "model", "data"), given: set[str] | None = None) -> list[str]:
    """``key: checkpoint value -> this value`` for the settings of ``sections`` that differ
    (those in ``START_ONLY`` left out, and keys the run's config lacks, options added since it
    ran, unless this command sets them). ``given``: the keys this command sets (default: the
    Hydra command line's, :func:`given_keys`)."""
    now = _plain(cfg)
    saved = _plain(OmegaConf.create(saved))
    out: list[str] = []
    given = given_keys() if given is None else given

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                name = f"{prefix}.{key}" if prefix else str(key)
                if key not in a and not any(g == name or g.startswith(name + ".")
                                            for g in given):
                    continue  # a newer option at its default (rate_latents: None -> 0)
                walk(a.get(key), b.get(key), name)
        elif a != b and prefix not in START_ONLY:
            out.append(f"{prefix}: {a!r} in the run, {b!r} now")

    for section in sections:
        walk(saved.get(section), now.get(section) if isinstance(now, dict) else None, section)
    return out


def _plain(cfg: DictConfig) -> Any:
    """``cfg`` as plain containers, resolved where it can be: outside the Hydra app a run's
    record keeps ``${hydra:...}`` (its output paths), so each value is resolved on its own and
    one that cannot be stays as written (``${..latents}`` resolved beside it: compared with a
    config resolved in full, it differed from ``10`` in every run)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except (OmegaConfBaseException, ValueError):  # an interpolation only Hydra's app resolves
        return _each_resolved(cfg)


def _each_resolved(node: Any) -> Any:
    if not isinstance(node, (DictConfig, ListConfig)):
        return node
    written: Any = OmegaConf.to_container(node, resolve=False)
    keys = list(written) if isinstance(written, dict) else range(len(written))
    out: dict[Any, Any] = {}
    for key in keys:
        try:
            out[key] = _each_resolved(node[key])
        except (OmegaConfBaseException, ValueError):
            out[key] = written[key]  # as written: "${hydra:runtime.output_dir}"
    return out if isinstance(written, dict) else list(out.values())


def check_resume(cfg: DictConfig, module: torch.nn.Module, saved: dict[str, Any],
                 ckpt_path: str, run_dir: Path) -> None:
    """Refuse to resume the checkpoint ``saved`` (read from ``ckpt_path``) into a model it does
    not fit, naming what differs and the run's own overrides (:func:`restored_on_failure` puts
    an in-place run's files back); warn about other differing settings of the same model."""
    weights = saved.get("state_dict", {})
    upgraded = upgrade_state_dict(module, weights)
    if upgraded and cfg.get("train", True):  # the weights load, the optimiser's state would not
        raise ValueError(
            f"ckpt_path={ckpt_path} holds a model of another layout than this command builds ("
            + "; ".join(upgraded) + "): it tests, evaluates and predicts as trained, but "
            "training on needs its own layout: resume with model.encoder.lead_gap=false "
            "(model.lead_gap=false for the RNN-VAE).")
    problem = weights_mismatch(module.state_dict(), weights)
    record = saved.get(RUN_RECORD)
    if problem is None:  # the same model: other data or task settings may be meant, say them
        differences = [] if record is None else config_differences(
            record["config"], cfg, ("model", "data", "module"))
        restored = [d for d in differences if d.startswith(RESTORED_ON_RESUME)]
        if restored and cfg.get("train", True):
            raise ValueError(
                "resuming loads the checkpoint's optimiser state, settings included, over this "
                "command's, so these would not take effect:\n" + "\n".join(
                    f"  {line}" for line in restored[:8]) + "\nResume with the run's values "
                "(the schedule's settings, module.scheduler.*, do apply from here on), or "
                "start a new run for other optimiser settings.")
        if differences:
            log.warning("resuming with settings that differ from the run's (intended?):\n%s",
                        "\n".join(f"  {line}" for line in differences[:12]))
        return
    message = [f"ckpt_path={ckpt_path} holds a different model than this command builds:",
               problem]
    if record is None:
        message.append("Resume with the options the run was trained with (its original "
                       "command line).")
    else:
        differences = config_differences(record["config"], cfg)
        if differences:
            message.append("The run's settings that differ:\n" + "\n".join(
                f"  {line}" for line in differences[:8]))
        asked = given_keys()
        given = [_asked_length(str(o), cfg, asked) for o in [*record.get("search", []),
                                                             *record["overrides"]]
                 if not str(o).startswith(("ckpt_path=", "hydra.run.dir="))]
        # where and from what: pasted without them, the hint started a fresh run elsewhere
        where = (f"hydra.run.dir={run_dir} ckpt_path=last" if _in_place(ckpt_path, run_dir)
                 else f"ckpt_path={ckpt_path}")
        if any(str(o).lstrip("+").startswith("hparams_search=") for o in given):
            where = f"hydra.mode=RUN {where}"  # a search's config sets MULTIRUN itself
        message.append("Resume with the run's own overrides: " + " ".join([*given, where]))
        if _in_place(ckpt_path, run_dir):
            message.append(f"(the run's {run_dir / '.hydra'} files, which this command had "
                           "overwritten, are restored from the checkpoint)")
    raise ValueError("\n".join(message))


KEPT_ON_RESUME = {"module.grad_clip": None, "model.encoder_error_scale": None}
"""Settings a resumed run keeps from its record unless the command gives them, so that a
default changed since it started does not change it midway; the value is what a run recorded
before the option existed did (``grad_clip``: no clip; ``encoder_error_scale``: an encoder
reading every value alike). A key the config does not have (a baseline's model) stays out."""


def keep_run_settings(cfg: DictConfig, saved: dict[str, Any], run_dir: Path) -> None:
    """Set :data:`KEPT_ON_RESUME`'s keys to the resumed run's values (in ``cfg`` and this run's
    ``.hydra/config.yaml``) where the command does not give them."""
    record = saved.get(RUN_RECORD)
    if record is None:
        return
    given = given_keys()
    run_cfg = OmegaConf.create(record["config"])
    for key, before in KEPT_ON_RESUME.items():
        if key in given:
            continue
        value = OmegaConf.select(run_cfg, key, default=before)
        if OmegaConf.select(cfg, key, default=None) == value:
            continue
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, force_add=True)
        log.info("%s=%s, as the run trained (give %s=... to change it)", key, value, key)
        path = run_dir / ".hydra" / "config.yaml"
        if path.is_file():
            written = OmegaConf.load(path)
            OmegaConf.update(written, key, value, force_add=True)
            OmegaConf.save(written, path)


def given_keys() -> set[str]:
    """The keys this command line sets (``key=value``, ``+key=``, ``++key=``), inside the Hydra
    app; empty outside it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {str(o).lstrip("+~").partition("=")[0] for o in HydraConfig.get().overrides.task}


def _asked_length(override: str, cfg: DictConfig, asked: set[str]) -> str:
    """The run's override of how long to train, with this command's value when this command
    gives one (the hint repeated the run's ``trainer.max_epochs=6`` to a resume asking for 7:
    pasted, it trained nothing; one that gives none keeps the run's, not the default).
    ``asked``: the keys this command sets (:func:`given_keys`)."""
    key, sep, _ = override.lstrip("+").partition("=")
    if sep and key in ("trainer.max_epochs", "trainer.max_steps") and key in asked:
        now = (cfg.get("trainer") or {}).get(key.split(".", 1)[1])
        if now is not None:
            return f"{override.split('=', 1)[0]}={now}"
    return override


def _in_place(ckpt_path: str, run_dir: Path) -> bool:
    return Path(ckpt_path).resolve().parent.parent == run_dir.resolve()


@contextlib.contextmanager
def restored_on_failure(ckpt_path: str | None, run_dir: Path
                        ) -> Iterator[dict[str, Any] | None]:
    """Yields the checkpoint at ``ckpt_path`` (read once, memory-mapped; None without one).

    Resuming in place, Hydra has already rewritten the run's ``.hydra`` files for this command:
    if it fails before training starts (a model that does not fit, a column that is not
    there...), the run's own files are put back from the checkpoint, so that ``latentode-eval``
    and ``latentode-predict`` keep working on the run."""
    saved = None
    if ckpt_path:
        saved = read_checkpoint(ckpt_path)
    record = saved.get(RUN_RECORD) if saved and _in_place(str(ckpt_path), run_dir) else None
    try:
        yield saved
    except BaseException:
        if record is not None:
            restore_run_files(record, run_dir / ".hydra")
            log.error("this resume failed before training: the run's %s files were restored "
                      "from the checkpoint", run_dir / ".hydra")
        raise


_SNAPSHOTS: dict[str, dict[str, bytes]] = {}  # run dir -> its .hydra files before this command


def _run_files(run_dir: Path) -> list[str]:
    """What shows that ``run_dir`` holds a run: its checkpoints and ``test_metrics.json``."""
    found = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    if (run_dir / "test_metrics.json").is_file():
        found.append("test_metrics.json")
    return found


def snapshot_run_files(run_dir: str | Path) -> None:
    """Keep in memory the ``.hydra`` files of a directory that holds a run, or that a run trains
    into (:mod:`latentode.cli.lock`), before Hydra rewrites them for this command (a Hydra
    callback's ``on_run_start``; the copy into ``paths.output_dir``), so that
    :func:`refuse_replacing_a_run` can put them back also where no checkpoint holds them
    (checkpoints deleted or switched off)."""
    run_dir = Path(run_dir)
    hydra_dir = run_dir / ".hydra"
    training = (run_dir / LOCK_FILE).is_file()  # a run there still young: no checkpoint yet
    if hydra_dir.is_dir() and (_run_files(run_dir) or training):
        _SNAPSHOTS[str(run_dir.resolve())] = {p.name: p.read_bytes()
                                              for p in hydra_dir.iterdir() if p.is_file()}


def put_back_run_files(run_dir: Path) -> bool:
    """Put back the ``.hydra`` files Hydra rewrote for this command in a directory that holds
    a run: from the snapshot taken before (:func:`snapshot_run_files`), else from the newest
    readable checkpoint's run record. Whether anything was put back."""
    snapshot = _SNAPSHOTS.pop(str(run_dir.resolve()), None)
    if snapshot:
        for name, data in snapshot.items():
            (run_dir / ".hydra" / name).write_bytes(data)
        return True
    for newest in sorted((run_dir / "checkpoints").glob("*.ckpt"),
                         key=lambda p: p.stat().st_mtime, reverse=True):
        with contextlib.suppress(Exception):  # an unreadable checkpoint: try the next
            record = torch.load(newest, map_location="cpu", weights_only=False,
                                mmap=True).get(RUN_RECORD)
            if record is not None:
                restore_run_files(record, run_dir / ".hydra")
                return True
    return False


def refuse_replacing_a_run(run_dir: Path, asked_last: bool = False,
                           own_output_dir: bool = False) -> None:
    """Refuse a new run (no ``ckpt_path``) into a directory that holds one: its checkpoints,
    ``test_metrics.json``, plots and ``.hydra`` files were replaced without a word (only
    ``metrics.csv`` was moved aside). Hydra has already rewritten ``.hydra`` for this command:
    put back from the snapshot taken before (:func:`snapshot_run_files`), else from the
    directory's newest checkpoint that holds them. ``asked_last``: the command said
    ``ckpt_path=last`` and found no ``last.ckpt``; ``own_output_dir``: the directory is
    ``paths.output_dir``, set apart from Hydra's."""
    found = _run_files(run_dir)
    if not found:
        return
    restored = put_back_run_files(run_dir)
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    where = "paths.output_dir=..." if own_output_dir else "hydra.run.dir=..."
    if asked_last:
        resume = (f"ckpt_path=last found no checkpoints/last.ckpt there (callbacks."
                  f"last_checkpoint off?): continue from one of its checkpoints with "
                  f"ckpt_path={run_dir / 'checkpoints'}/<file>")
    else:
        resume = "Continue it with ckpt_path=last (and the run's own options)"
    lost = "" if restored or not (run_dir / ".hydra").is_dir() else (
        f" (Hydra had already rewritten its {run_dir / '.hydra'} files for this command, and "
        "no copy of the run's own was found to put back.)")
    raise ValueError(
        f"{run_dir} holds a run already ({shown}): a new run there would replace its "
        f"checkpoints, test metrics and config. {resume}, train into another directory "
        f"({where}), or move this one away first.{lost}")


def keep_own_run_files(record: dict[str, Any], run_dir: Path) -> None:
    """At the end of a run, put back its ``.hydra`` files (as its run ``record`` holds them)
    where another command into the same directory rewrote them before it was refused (a
    sweep's job, whose files Hydra writes before any callback could keep the run's)."""
    hydra_dir = run_dir / ".hydra"
    files = record.get("files") or {}
    changed = [name for name, text in files.items() if (hydra_dir / name).is_file()
               and (hydra_dir / name).read_text(encoding="utf-8") != text]
    if changed:
        restore_run_files(record, hydra_dir)
        log.warning("%s: %s had been rewritten by another command (refused there); put back",
                    hydra_dir, ", ".join(changed))


def restore_run_files(record: dict[str, Any], hydra_dir: Path) -> None:
    """Write back the ``.hydra`` files a checkpoint's run record holds (checkpoints of older
    versions hold only the config and overrides)."""
    if not hydra_dir.is_dir():
        return
    files = dict(record.get("files") or {})
    files.setdefault("config.yaml", OmegaConf.to_yaml(OmegaConf.create(record["config"])))
    files.setdefault("overrides.yaml", yaml.safe_dump(list(record["overrides"])))
    for name, text in files.items():
        (hydra_dir / name).write_text(text, encoding="utf-8")  # Hydra writes UTF-8


def not_fitting(ckpt: Path, config_path: Path, problem: str) -> str:
    """The error for a checkpoint whose weights do not fit the model its run's config builds."""
    return (f"{ckpt} does not fit the model that its run's config {config_path} builds:\n"
            f"{problem}\nThat config may have been rewritten since (e.g. by resuming the run "
            "with other options): put the run's own settings back in it, or pass them with "
            "overrides=[...].")


def load_fitting(module: torch.nn.Module, weights: dict[str, torch.Tensor], ckpt: Path,
                 config_path: Path) -> None:
    """Load a run's checkpointed ``weights`` into the ``module`` its config built (earlier
    layouts upgraded first), or refuse by name when they do not fit (:func:`not_fitting`)."""
    upgrade_state_dict(module, weights)
    problem = weights_mismatch(module.state_dict(), weights)
    if problem:
        raise ValueError(not_fitting(ckpt, config_path, problem))
    module.load_state_dict(weights)
