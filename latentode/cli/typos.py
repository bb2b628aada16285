"""A misspelt override on the command line, named with the closest existing key or option.

Hydra refuses ``trainer.max_epoch=1`` with "Could not override 'trainer.max_epoch'. To append
to your config use +trainer.max_epoch=1", advice that does not help here (latentode-train
refuses a key that nothing reads, :func:`latentode.cli.options.refuse_unread_settings`), and
``model=hoper_latent_ode`` with the list of the group's options. After Hydra's message, the
console scripts add one line: the key and the closest key of the composed config ("did you mean
trainer.max_epochs?"), or the option and the closest option of its group ("did you mean
model=hopper_latent_ode?").

Only done once Hydra has failed, and only when the run itself never started (a failure inside
training is not a composition error): the command line is composed again through Hydra's compose
API to find the override Hydra stopped at and the config without it. A run that composes costs
nothing more.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from latentode.cli import config_dir
from latentode.cli.options import closest_prefix

_OTHER_OPTIONS = 8  # of them for a key that another swept option of a group has
_TRIES = 24  # compositions at most (each ~0.3 s): sweeps' values, then overrides taken out
_KEY_ERRORS = (re.compile(r"Could not override '([^']+)'\."),
               re.compile(r"Could not delete from config\. '([^']+)' does not exist\."))


def _candidates(override: Any) -> list[str]:
    """The single overrides a (sweep) override stands for: each value of a choice or range, and
    null for an interval of the Optuna sweeper (its key is checked all the same)."""
    if not override.is_sweep_override():
        return [override.input_line]
    try:
        values = list(override.sweep_string_iterator())
    except Exception:  # an interval: no value of its own to compose
        values = []
    return [f"{override.get_key_element()}={value}" for value in values or ["null"]]


def _culprit(error: Exception, lines: list[str], parsed: list[Any]) -> tuple[int, str] | None:
    """Which of the single overrides ``lines`` Hydra stopped at, and the hint's kind."""
    from hydra.errors import MissingConfigException

    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, name = str(error.missing_cfg_file).rpartition("/")
        for i, override in enumerate(parsed):
            if override.key_or_group.split("@")[0] == group and not override.is_delete():
                value = lines[i].split("=", 1)[-1]
                if value == name or name in _listed(value):
                    return i, "group"
        return None
    for pattern in _KEY_ERRORS:
        found = pattern.search(str(error))
        if found:
            for i, override in enumerate(parsed):
                if override.key_or_group == found.group(1) and "/" not in found.group(1):
                    return i, "key"
    return None


def _listed(value: str) -> list[str]:
    """The options of a list selection (``[model_checkpoint,ema]``); [] for one option."""
    return [v.strip() for v in value.strip("[]").split(",")] if value.startswith("[") else []


def _group_hint(command: str, group: str, name: str, options: list[str],
                pieces: Sequence[str] = (), value: str = "") -> str:
    """``pieces``: the group's ``parts/`` (configs the default set is made of, not options);
    ``value``: the override's value (a list selects several)."""
    listed = _listed(value)
    if group == "callbacks" and listed and all(v in pieces for v in listed):
        return (f"{command}: callbacks={value} names pieces of the default set "
                "(conf/callbacks/parts/), not options of callbacks; those pieces alone: "
                f"callbacks=none '+callbacks/parts={value}'.")
    if group == "callbacks" and name in pieces and not listed:
        return (f"{command}: callbacks={name} is not an option: {name} is one of the default "
                f"callbacks (conf/callbacks/parts/), on unless removed (~callbacks.{name}; its "
                f"settings: callbacks.{name}.<key>=...; into another set: "
                f"+callbacks/parts={name}). Selecting it alone would replace the whole default "
                f"set ({', '.join(pieces)}) with it; callbacks=ema_only trains with the weight "
                "average alone.")
    if group == "callbacks" and name in pieces:  # a list mixing pieces with options or typos
        return (f"{command}: callbacks={value}: {name} is a piece of the default set "
                f"(conf/callbacks/parts/), not an option of callbacks (its options: "
                f"{', '.join(options)}); pieces are added with +callbacks/parts=<piece>.")
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"; did you mean {group}={close[0]}?" if close else \
        f" (its options: {', '.join(options)})."
    return f"{command}: {name} is not an option of the config group {group}{hint}"


def closest_key(cfg: Any, key: str) -> str | None:
    """The existing key of ``cfg`` closest to the dotted ``key``, each misspelt part corrected in
    turn (``trainr.max_epoch``: trainer, then trainer.max_epochs); None if a part has no close
    match."""
    parts = key.split(".")
    for _ in parts:
        found = closest_prefix(cfg, ".".join(parts))
        if found is None:
            return None
        fixed = found.split(".")
        parts = [*fixed, *parts[len(fixed):]]
        if _has_key(cfg, parts):
            return ".".join(parts)
    return None


def _has_key(cfg: Any, parts: list[str]) -> bool:
    """Whether the dotted key ``parts`` is in ``cfg`` (a value ``???`` included)."""
    from omegaconf import DictConfig

    node = cfg
    for part in parts:
        if not isinstance(node, DictConfig) or part not in list(node.keys()):
            return False
        node = node._get_node(part)
    return True


def _misspelt_group(command: str, key: str, value: str, loader: Any) -> str | None:
    """For ``experiments=hopper_interp`` (a top-level key like a config group's name): the
    close groups, those offering ``value`` first (``modle=latent_ode``: model and module both
    do, so both are named; a key suggestion alone would send the user to one of them)."""
    groups = [g for g in loader.list_groups("") if g != "hydra"]
    close = difflib.get_close_matches(key, groups, n=3, cutoff=0.7)
    if not close:
        return None
    offering = [g for g in close if value in loader.get_group_options(g)]
    if offering:
        meant = " or ".join(f"{g}={value}" for g in offering)
        return f"{command}: {key} is not a config group; did you mean {meant}?"
    options = loader.get_group_options(close[0])
    return (f"{command}: {key} is not a config group; did you mean {close[0]}? (its options: "
            f"{', '.join(options)})")


def _is_group(loader: Any, override: Any) -> bool:
    """Whether ``override`` chooses a config group's option (``model=...``, ``model/encoder``)."""
    try:
        return bool(loader.get_group_options(override.key_or_group.split("@")[0]))
    except Exception:
        return False


def _target_takes(cfg: Any, key: str) -> str | None:
    """The ``_target_`` of ``key``'s parent when it takes ``key``'s last part as an argument
    (``trainer.precision``: ``lightning.Trainer`` does, though the config does not list it),
    else None."""
    from omegaconf import DictConfig, OmegaConf

    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else None
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    target = str(node.get("_target_"))
    try:
        from hydra.utils import get_object

        takes = inspect.signature(get_object(target)).parameters
    except Exception:  # not importable here, or no signature: no claim either way
        return None
    return target if name in takes else None


def _key_hint(command: str, key: str, cfg: Any, plus_refused: bool) -> str:
    target = _target_takes(cfg, key)
    if target is not None:
        name = key.rpartition(".")[2]
        return (f"{command}: {key} is not in the config, but {target} takes {name}: add it "
                f"with +{key}=...")
    close = closest_key(cfg, key)
    hint = f"; did you mean {close}?" if close else "."
    line = f"{command}: {key} is not a key of the config{hint}"
    if plus_refused and not key.startswith("hydra."):
        line += (f" (Hydra's advice to append it with +{key}=... would not help: {command} "
                 "refuses settings it does not read; see the keys with --cfg job.)")
    return line


def composition_hint(config_name: str, overrides: list[str], command: str = "latentode-train",
                     plus_refused: bool = True, conf: str | None = None) -> str | None:
    """The line to add to Hydra's error when ``overrides`` do not compose with ``config_name``
    because of a key or group option that does not exist; None when they compose, or fail for
    another reason (a syntax error, a value of the wrong type: Hydra's message says it)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a syntax error: Hydra said so
        return None
    choices = [_candidates(o) for o in parsed]
    state = GlobalHydra.instance()
    saved = state.hydra
    state.clear()
    tries = [0]

    def attempt(lines: list[str]) -> Exception | None:
        tries[0] += 1
        try:
            compose(config_name=config_name, overrides=lines, return_hydra_config=True)
        except ConfigCompositionException as error:
            return error
        return None

    try:
        with initialize_config_dir(config_dir=conf or config_dir(), version_base="1.3"):
            # the first value of each sweep, then each other value in turn (a sweep composes
            # every job's config before the first runs)
            lines = [c[0] for c in choices]
            error = attempt(lines)
            for i, values in enumerate(choices):
                for value in values[1:]:
                    if error is not None or tries[0] >= _TRIES:
                        break
                    lines = [*lines[:i], value, *lines[i + 1:]]
                    error = attempt(lines)
                if error is not None:
                    break
            if error is None:
                return None
            found = _culprit(error, lines, parsed)
            if found is None:
                return None
            index, kind = found
            if kind == "group":
                group = parsed[index].key_or_group.split("@")[0]
                missing = getattr(error, "missing_cfg_file", None)  # a listed option's
                name = str(missing).rpartition("/")[2] if missing else \
                    lines[index].split("=", 1)[1]
                options = list(getattr(error, "options", None) or
                               state.config_loader().get_group_options(group))
                pieces = list(state.config_loader().get_group_options(f"{group}/parts"))
                return _group_hint(command, group, name, options, pieces,
                                   lines[index].split("=", 1)[1])
            # the config composed without the key (and any other override that stops it)
            key = parsed[index].key_or_group
            # a key that another swept option of a config group has (a grid of a key only some
            # options have; it was "did you mean" another key, in either order of the options);
            # group sweeps only (a value of trainer.max_epochs changes no key), at most
            # _OTHER_OPTIONS compositions, leaving the rest for the closest key below
            loader = state.config_loader()
            budget = tries[0] + _OTHER_OPTIONS
            for j, values in enumerate(choices):
                if j == index or len(values) < 2 or not _is_group(loader, parsed[j]):
                    continue
                for value in values:
                    if value == lines[j] or tries[0] >= min(budget, _TRIES):
                        continue
                    other = [*lines[:j], value, *lines[j + 1:]]
                    del other[index]
                    tries[0] += 1
                    try:
                        there = compose(config_name=config_name, overrides=other,
                                        return_hydra_config=True)
                    except ConfigCompositionException:
                        continue
                    if _has_key(there, key.split(".")):
                        return (f"{command}: {key} is a key of the config with {value} but not "
                                f"with {lines[j]}: a sweep (-m) composes every combination of "
                                "its values. Sweep the options apart (one -m per option, each "
                                f"with its own keys), or leave {key} out.")
            rest, rest_parsed = lines[:index] + lines[index + 1:], \
                parsed[:index] + parsed[index + 1:]
            while tries[0] < _TRIES:
                try:
                    tries[0] += 1
                    cfg = compose(config_name=config_name, overrides=rest,
                                  return_hydra_config=True)
                except ConfigCompositionException as other:
                    more = _culprit(other, rest, rest_parsed)
                    if more is None:
                        return None
                    del rest[more[0]], rest_parsed[more[0]]
                    continue
                if "." not in key and not parsed[index].is_delete():
                    hint = _misspelt_group(command, key, lines[index].split("=", 1)[-1],
                                           state.config_loader())
                    if hint:
                        return hint
                return _key_hint(command, key, cfg,
                                 plus_refused and not parsed[index].is_delete())
            return None
    except Exception:  # the hint must never hide Hydra's own error
        return None
    finally:
        GlobalHydra.instance().hydra = saved


def explain_failed_composition(config_name: str, argv: list[str] | None = None,
                               command: str = "latentode-train",
                               plus_refused: bool = True) -> None:
    """Print :func:`composition_hint` for this command line (``sys.argv``) to stderr, if any."""
    from hydra._internal.utils import get_args_parser

    argv = sys.argv[1:] if argv is None else argv
    try:
        args, _ = get_args_parser().parse_known_args(argv)
    except BaseException:  # argparse exits on what it cannot parse: nothing to add
        return
    if args.config_dir is not None or args.config_path is not None:
        return  # another config source than the one composed here
    hint = composition_hint(args.config_name or config_name, list(args.overrides or []),
                            command, plus_refused)
    if hint:
        print(hint, file=sys.stderr, flush=True)


def run_app(app: Callable[[], Any], config_name: str, command: str,
            plus_refused: bool = True, started: Callable[[], bool] = lambda: False) -> Any:
    """Run a ``@hydra.main`` app; when it exits with status 1 (or raises, under
    ``HYDRA_FULL_ERROR=1``) before ``started()`` says the task ran, add the hint to the error.
    The warning filters, display and format the command sets (warnings into its log file,
    ``UserWarning: message``) are its own: put back when it returns, so that a command run
    in-process (a notebook, a script) leaves later warnings as they were."""
    shown, formatted = warnings.showwarning, warnings.formatwarning
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with warnings.catch_warnings():
            return _run_app(app, config_name, command, plus_refused, started)
    finally:
        logging.captureWarnings(False)  # (logging's record of what it replaced, reset)
        warnings.showwarning, warnings.formatwarning = shown, formatted
        _put_back_root_logging(root, handlers, level)


def _put_back_root_logging(root: logging.Logger, handlers: list[logging.Handler],
                           level: int) -> None:
    """The root logger's handlers and level as before the command: Hydra's (its run's log
    file, its console format) are closed, so that later logging of the calling process does
    not go on into the finished run's ``train.log``."""
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def _run_app(app: Callable[[], Any], config_name: str, command: str, plus_refused: bool,
             started: Callable[[], bool]) -> Any:
    try:
        return app()
    except BrokenPipeError:  # `latentode-train --help | head`: the reader left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # (Python's advice: no second error at exit)
        raise SystemExit(141) from None
    except SystemExit as stop:
        if stop.code == 1 and not started():
            explain_failed_composition(config_name, command=command, plus_refused=plus_refused)
        raise
    except Exception as error:
        from hydra.errors import ConfigCompositionException

        if isinstance(error, ConfigCompositionException) and not started():
            explain_failed_composition(config_name, command=command, plus_refused=plus_refused)
        if (isinstance(error, ValueError) and str(error).startswith("Only one of --run")
                and not started()):  # Hydra's refusal of -m --cfg job: a traceback before
            job = (" To see a sweep job's config, drop -m and give that job's value of each "
                   "swept key (model.latents=8 --cfg job)."
                   if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in sys.argv)
                   else "")
            print(f"{command}: {error} (Hydra).{job}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise


__all__ = ["composition_hint", "explain_failed_composition", "run_app"]
