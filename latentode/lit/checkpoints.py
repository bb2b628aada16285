"""Checkpoint callbacks that keep to their own run directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

_PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")


def _same_dir(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


class RunModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for a run that may be resumed from another directory.

    Lightning restores the saved record only when the checkpoint directory is the very path it
    was written from; otherwise it keeps the saved ``best_model_path``, an absolute path into
    the old directory: a copied run then tested the original's best checkpoint (or died with
    FileNotFoundError once that directory was gone), and forgot the best score, so the first
    epoch after the resume became "best". Here a run whose checkpoint files are in this
    directory under the same names (moved, copied, reached by another path) gets its record
    back with the paths moved here; a checkpoint from another run starts this directory's own
    record (nothing of the other directory is tested or deleted). The record is saved under
    ``ModelCheckpoint``'s own key, so runs written before this class resume with it."""

    @property
    def state_key(self) -> str:
        # Lightning finds a callback's saved state by its class name: keep ModelCheckpoint's
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__):]

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer_ref = trainer

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dir = state_dict.get("dirpath")
        if saved_dir is None or self.dirpath is None or saved_dir == self.dirpath:
            super().load_state_dict(state_dict)
            return
        trainer = getattr(self, "_trainer_ref", None)
        resumed = getattr(trainer, "ckpt_path", None)
        # the record follows only a run resumed from a checkpoint in this directory: another
        # run's files of the same names (best_epoch002.ckpt) are not its own
        moved = (self._moved_here(state_dict, saved_dir) if resumed is not None
                 and _same_dir(Path(resumed).parent, self.dirpath) else None)
        if moved is None:
            log.info("checkpoint record of %s not carried over to %s (its files are not here): "
                     "this run keeps its own best checkpoint from now on", saved_dir,
                     self.dirpath)
            return
        super().load_state_dict(moved)

    def _moved_here(self, state: dict[str, Any], saved_dir: str) -> dict[str, Any] | None:
        """``state`` with every path into ``saved_dir`` moved to this directory, or None when a
        file it names is not here (a checkpoint of another run)."""
        assert self.dirpath is not None
        here = Path(self.dirpath)

        def move(path: str) -> str | None:
            if not path:
                return path
            old = Path(path)
            if not _same_dir(old.parent, saved_dir) and not _same_dir(old.parent, here):
                return None
            new = here / old.name
            return str(new) if new.is_file() else None

        moved = {**state, "dirpath": self.dirpath}
        for key in _PATHS:
            if key in state and state[key] is not None:
                moved[key] = move(state[key])
                if moved[key] is None:
                    return None
        best_k = {}
        for path, score in (state.get("best_k_models") or {}).items():
            new = move(path)
            if new is None:
                return None
            best_k[new] = score
        moved["best_k_models"] = best_k
        return moved
