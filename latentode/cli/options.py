"""Options of ``latentode-eval`` / ``latentode-predict``: their own keys only.

Both rebuild a run from its saved config; the run's config is changed with
``'overrides=[...]'``. Hydra accepts any ``+key=value`` it is given, so ``+data.dataset.n_series=
200`` used to be taken and ignored: the metrics of the run's own data came back as if of other
data. Here a key that is not the tool's own is refused, with the ``overrides=[...]`` form that
does what was meant, or the option it resembles.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from latentode.cli import config_dir, load_settings

RUNTIME_KEYS = ("paths", "hydra")  # composed from the config groups, not the tool's file


def load_config(config_name: str) -> DictConfig:
    """``conf/<config_name>.yaml`` as written (not composed)."""
    return load_settings(Path(config_dir()) / f"{config_name}.yaml")


def own_options(config_name: str, data: DictConfig | None = None) -> list[str]:
    """The top-level keys of ``conf/<config_name>.yaml`` (without ``defaults``)."""
    data = load_config(config_name) if data is None else data
    return [str(k) for k in data if k != "defaults"]


def leaves(value: Any, prefix: str) -> list[str]:
    """``key=value`` for every leaf under ``prefix``."""
    if isinstance(value, DictConfig) and len(value):
        return [item for k, v in value.items_ex(resolve=False)
                for item in leaves(v, f"{prefix}.{k!s}")]
    plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return [f"{prefix}={plain}"]


def refuse_foreign_options(cfg: DictConfig, config_name: str, tool: str) -> None:
    """Raise when ``cfg`` holds a top-level key that ``conf/<config_name>.yaml`` does not
    define (see the module docstring)."""
    options = own_options(config_name)
    foreign = [k for k in cfg if k not in options and k not in RUNTIME_KEYS]
    if not foreign:
        return
    given = [item for k in foreign for item in leaves(cfg[k], str(k))]
    close = {k: difflib.get_close_matches(str(k), options, n=1) for k in foreign}
    hints = [f"{k!s} is not an option of {tool}; did you mean {close[k][0]}?"
             for k in foreign if close[k]]
    run_keys = [item for item in given if item.split(".")[0].split("=")[0] not in
                {k for k in foreign if close[k]}]
    if run_keys:
        # each item quoted: Hydra's list grammar refuses an unquoted "=" ([a.b=1] fails); a
        # quote inside an item escaped (+data.x="a,b")
        quoted = ",".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for item in run_keys)
        hints.append(f"{tool} rebuilds the run from its own saved config; to change it, pass "
                     f"'overrides=[{quoted}]'")
    raise ValueError(f"{tool} got {', '.join(given)}: " + "; ".join(hints)
                     + f". Its options: {', '.join(options)}.")


def closest_prefix(cfg: DictConfig, key: str) -> str | None:
    """The dotted ``key`` up to its first part missing from ``cfg``, that part replaced by the
    closest existing one (``trainr.max_epoch`` -> ``trainer``); None when no part is missing
    or none is close."""
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return None
        if part not in node:
            close = difflib.get_close_matches(part, [str(k) for k in node], n=1)
            return ".".join([*parts[:depth], close[0]]) if close else None
        node = node[part]
    return None


def suggest_key(cfg: DictConfig, key: str) -> str:
    """`` Did you mean a.b.c?`` for a dotted ``key`` missing from ``cfg`` (or empty)."""
    close = closest_prefix(cfg, key)
    return f" Did you mean {close}?" if close else ""


def _group_names(data: DictConfig) -> list[str]:
    """The config groups a config's defaults list selects (``data``, ``model``...)."""
    names = []
    for entry in data.get("defaults", []):
        if isinstance(entry, DictConfig):
            names += [str(k).split("@")[0].replace("override ", "").strip() for k in entry]
    return names


def refuse_unread_settings(cfg: DictConfig) -> None:
    """Refuse settings ``latentode-train`` would ignore, naming them and the likely fix.

    Hydra takes any ``+key=value``, and a group's entry without ``_target_`` is skipped, so a
    misspelt ``+sede=3``, ``+trainr.max_epochs=5``, ``+plots.n_serie=1`` or
    ``+callbacks.early_stoping.patience=3`` (or ``callbacks.early_stopping.patience`` without
    selecting it) ran a different experiment without a word. Refused: a top-level key that
    neither ``conf/train.yaml`` nor its groups define and no ``${...}`` of the config reads (an
    experiment's own variable such as ``observed_fraction`` is read), a ``plots`` key that
    ``train.yaml`` does not define, and a callback or logger entry with settings but no
    ``_target_``."""
    train = load_config("train")
    train_keys, groups = own_options("train", train), _group_names(train)
    known = set(train_keys) | set(groups) | set(RUNTIME_KEYS)
    text = OmegaConf.to_yaml(cfg, resolve=False) if len(cfg) else ""
    for key in cfg:
        key = str(key)
        if key in known or "${" + key + "}" in text or "${" + key + "." in text:
            continue
        close = difflib.get_close_matches(key, sorted(known - set(RUNTIME_KEYS)), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ValueError(f"{', '.join(leaves(cfg[key], key))}: {key} is not a setting of "
                         f"latentode-train and nothing in the config reads it.{hint} Its "
                         f"settings: {', '.join(train_keys)}; its groups: "
                         f"{', '.join(groups)}.")
    plots = train.get("plots") or {}
    for key in cfg.get("plots") or {}:
        if key not in plots:
            close = difflib.get_close_matches(str(key), [str(k) for k in plots], n=1)
            hint = f" Did you mean plots.{close[0]}?" if close else ""
            raise ValueError(f"plots.{key} is not a plot setting (they are: "
                             f"{', '.join(map(str, plots))}).{hint}")
    for group in ("callbacks", "logger"):
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        selected = [str(k) for k, v in node.items_ex(resolve=False)
                    if isinstance(v, DictConfig) and "_target_" in v]
        for key, value in node.items_ex(resolve=False):
            if isinstance(value, DictConfig) and len(value) and "_target_" not in value:
                choices = sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
                close = difflib.get_close_matches(str(key), selected + choices, n=1)
                hint = f" Did you mean {group}.{close[0]}?" if close else ""
                if key in choices:
                    hint = (f" Select it first: {group}={key} (conf/{group}/{key}.yaml, which "
                            f"says what it keeps of the default), then set {group}.{key}.*.")
                elif (Path(config_dir()) / group / "parts" / f"{key!s}.yaml").is_file():
                    hint = (f" Add it first: +{group}/parts={key!s} (conf/{group}/parts/"
                            f"{key!s}.yaml, a piece of the default set), then set "
                            f"{group}.{key!s}.*.")
                raise ValueError(
                    f"{', '.join(leaves(value, f'{group}.{key!s}'))}: {group}.{key!s} names no "
                    f"_target_, so no such {group} entry is selected and the settings would do "
                    f"nothing.{hint} Selected: {', '.join(selected) or 'none'}; the {group} "
                    f"group's choices: {', '.join(choices)} (e.g. {group}={choices[0]}).")
