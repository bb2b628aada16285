"""``latentode-from-paper``: the paper code's ``run_models.py`` arguments as a latentode-train run.

Users of the paper's research code (github.com/YuliaRubanova/latent_ode) have its command lines,
e.g. the README's MuJoCo one::

    latentode-from-paper -- --niters 300 -n 10000 -l 15 --dataset hopper --latent-ode \\
        --rec-dims 30 --gru-units 100 --units 300 --gen-layers 3 --rec-layers 3

prints the ``latentode-train`` command of the same run: the paper code's networks (the
``hopper_*`` model presets, which carry its architecture, at the sizes the flags give: its
``create_net(n_layers=k)`` has ``k + 1`` hidden layers, our ``layers`` counts hidden layers),
its optimiser and schedule (Adamax, ``--lr`` decayed by 0.999 per step to a tenth), its data
protocol (the ``experiment=`` recipe of the dataset and task; 80/20 train/test, no validation
split) and its seed. Where the two codes differ, a line on stderr says how; a flag with no
counterpart (GRU-D's ``--input-decay``, the ``activity`` dataset...) stops with what to use
instead. ``--run`` starts the run instead of printing it; latentode-train overrides after a
second ``--`` are appended (``... --rec-layers 3 -- trainer=gpu``).

The parser below takes exactly ``run_models.py``'s flags and defaults, so an omitted flag means
what it means there (e.g. ``-l`` 6, ``--niters`` 300, ``-r`` 1991).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

PAPER_DATASETS = ("periodic", "hopper", "physionet", "activity")


class PaperFlagError(ValueError):
    """A ``run_models.py`` argument that latentode cannot run as the paper code does."""


def paper_parser() -> argparse.ArgumentParser:
    """``run_models.py``'s parser: the same flags, spellings and defaults."""
    p = argparse.ArgumentParser("run_models.py", add_help=False)
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--niters", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("-b", "--batch-size", type=int, default=50)
    p.add_argument("--viz", action="store_true")
    p.add_argument("--save", type=str, default="experiments/")
    p.add_argument("--load", type=str, default=None)
    p.add_argument("-r", "--random-seed", type=int, default=1991)
    p.add_argument("--dataset", type=str, default="periodic")
    p.add_argument("-s", "--sample-tp", type=float, default=None)
    p.add_argument("-c", "--cut-tp", type=int, default=None)
    p.add_argument("--quantization", type=float, default=0.1)
    p.add_argument("--latent-ode", action="store_true")
    p.add_argument("--z0-encoder", type=str, default="odernn")
    p.add_argument("--classic-rnn", action="store_true")
    p.add_argument("--rnn-cell", default="gru")
    p.add_argument("--input-decay", action="store_true")
    p.add_argument("--ode-rnn", action="store_true")
    p.add_argument("--rnn-vae", action="store_true")
    p.add_argument("-l", "--latents", type=int, default=6)
    p.add_argument("--rec-dims", type=int, default=20)
    p.add_argument("--rec-layers", type=int, default=1)
    p.add_argument("--gen-layers", type=int, default=1)
    p.add_argument("-u", "--units", type=int, default=100)
    p.add_argument("-g", "--gru-units", type=int, default=100)
    p.add_argument("--poisson", action="store_true")
    p.add_argument("--classif", action="store_true")
    p.add_argument("--linear-classif", action="store_true")
    p.add_argument("--extrap", action="store_true")
    p.add_argument("-t", "--timepoints", type=int, default=100)
    p.add_argument("--max-t", type=float, default=5.0)
    p.add_argument("--noise-weight", type=float, default=0.01)
    return p


@dataclass
class Translation:
    """A paper command as latentode-train overrides, and how the two runs differ."""

    overrides: list[str]
    notes: list[str] = field(default_factory=list)

    def command(self) -> str:
        return shlex.join(["latentode-train", *self.overrides])


def translate(argv: Sequence[str]) -> Translation:
    """The latentode-train overrides of ``run_models.py argv`` (raises :class:`PaperFlagError`
    for what has no counterpart)."""
    parser = paper_parser()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise PaperFlagError(f"not run_models.py flags: {' '.join(unknown)}")
    notes: list[str] = []
    _refuse_unsupported(args)
    first = _model_flag(args, notes)
    model, model_overrides = _model(args, first, notes)
    overrides = [*_data(args, first, notes), f"model={model}", *model_overrides]
    overrides += [
        f"trainer.max_epochs={args.niters}",
        f"data.batch_size={args.batch_size}",
        f"module.optimizer.lr={args.lr!r}",
        "module.scheduler.gamma=0.999",  # utils.update_learning_rate(decay_rate=0.999,
        "module.scheduler.min_factor=0.1",  # lowest=args.lr / 10), once per iteration
        "module.grad_clip=null",  # the paper code clips no gradient
        f"seed={args.random_seed}",
    ]
    if args.viz:
        notes.append("--viz: no live window; each run writes plots/test_series.png (test series "
                      "with a posterior band) instead")
    if args.save != "experiments/":
        notes.append(f"--save {args.save}: checkpoints go to the run directory's checkpoints/ "
                     f"(pass hydra.run.dir=... to choose it)")
    return Translation(overrides, notes)


def _refuse_unsupported(args: argparse.Namespace) -> None:
    if args.load is not None:
        raise PaperFlagError(
            "--load evaluates a saved run: use `latentode-eval ckpt_path=<run>/checkpoints/"
            "last.ckpt` (or `latentode-train ... ckpt_path=<run>/checkpoints/last.ckpt` to go "
            "on training); the paper code's .ckpt files do not load into latentode")
    if args.dataset == "activity":
        raise PaperFlagError(
            "--dataset activity (UCI person activity) is not shipped with latentode; put the "
            "records in a long table (series, time, channels, label) and train with "
            "experiment=csv data.dataset.path=<file> (README: Data)")
    if args.dataset not in PAPER_DATASETS:
        raise PaperFlagError(f"--dataset {args.dataset!r}: run_models.py knows "
                             f"{', '.join(PAPER_DATASETS)}")
    if args.input_decay or args.rnn_cell != "gru":
        raise PaperFlagError(
            "GRU-D (--input-decay, --rnn-cell expdecay) is not offered; the closest baseline is "
            "GRU-dt (--classic-rnn without them: model=gru_dt)")
    if args.cut_tp is not None:
        raise PaperFlagError("-c/--cut-tp (cutting a stretch of points out of each series' "
                             "timeline, the periodic demo) has no counterpart; -s subsamples "
                             "the encoder's points instead")
    if args.classif and args.dataset in ("hopper", "periodic"):
        raise PaperFlagError("--classif: the hopper and periodic data have no labels (the "
                             "paper code refuses this too)")
    if args.extrap and args.dataset == "physionet":
        raise PaperFlagError(
            "--extrap on PhysioNet: there is no physionet extrapolation recipe; use "
            "experiment=physionet_interp with data.task._target_=latentode.data.Extrapolation "
            "data.task.fraction=0.5 data.task.count=null")
    if args.sample_tp is not None and args.sample_tp <= 0:
        raise PaperFlagError(f"-s {args.sample_tp:g}: give a share in (0, 1] or a count > 1")


def _model_flag(args: argparse.Namespace, notes: list[str]) -> str:
    """The model flag run_models.py runs: the first of its tests that is given."""
    chosen = [name for name, on in (("--latent-ode", args.latent_ode),
                                    ("--classic-rnn", args.classic_rnn),
                                    ("--ode-rnn", args.ode_rnn), ("--rnn-vae", args.rnn_vae))
              if on]
    if not chosen:
        raise PaperFlagError("no model: give one of --latent-ode, --ode-rnn, --rnn-vae, "
                             "--classic-rnn (run_models.py stops with 'Model not specified')")
    # run_models.py tests them in this order and takes the first
    first = next(n for n in ("--rnn-vae", "--classic-rnn", "--ode-rnn", "--latent-ode")
                 if n in chosen)
    if len(chosen) > 1:
        notes.append(f"{' and '.join(chosen)}: run_models.py runs {first} (the first it tests)")
    return first


def _model(args: argparse.Namespace, first: str, notes: list[str]) -> tuple[str, list[str]]:
    """The model preset carrying the paper code's architecture for the model flag ``first``,
    and the flags' sizes on it."""
    std = 1e-3 if args.dataset == "hopper" else 0.01  # obsrv_std in run_models.py
    latents, u = args.latents, args.units
    if first != "--latent-ode" and args.poisson:
        notes.append(f"--poisson: the paper code ignores it for {first}; so does this run")
    if first == "--rnn-vae":
        # RNN_VAE(rec_dims=--rec-dims, n_units=--units): see conf/model/hopper_rnn_vae.yaml
        return "hopper_rnn_vae", [f"model.latents={latents}", f"model.hidden={latents}",
                                  f"model.enc_hidden={args.rec_dims}", f"model.z0_units={u}",
                                  f"model.dec_units={u}", f"model.obs_std={std:g}",
                                  *_labels(args, first, notes)]
    if first in ("--classic-rnn", "--ode-rnn") and args.extrap:
        notes.append(f"{first} --extrap: run_models.py refuses it ('not implemented'), yet the "
                     "paper's tables report it; latentode runs it (the model predicts on from "
                     "the last point it saw)")
    if first == "--classic-rnn":
        return "hopper_gru_dt", [f"model.latents={latents}", f"model.dec_units={u}",
                                 f"model.obs_std={std:g}", *_labels(args, first, notes)]
    if first == "--ode-rnn":
        return "hopper_odernn", [f"model.latents={latents}", f"model.ode_units={u}",
                                 f"model.ode_layers={args.rec_layers + 1}",
                                 f"model.gru_units={args.gru_units}", f"model.obs_std={std:g}",
                                 *_labels(args, first, notes)]
    generative = [f"model.latents={latents}", f"model.gen_units={u}",
                  f"model.gen_layers={args.gen_layers + 1}", f"model.obs_std={std:g}"]
    if args.poisson:
        # the paper code's ODEFunc_w_Poisson: z0 and the field on 2 x -l, the decoder on the
        # first -l, the rate's net (create_net, n_layers=1: 2 hidden layers) on the last -l
        generative[0] = f"model.latents={2 * latents}"
        generative += ["model.poisson=true", f"model.rate_latents={latents}",
                       "model.rate_layers=2"]
        notes.append("--poisson: the paper code scales the rate's integral by 1/100 inside "
                     "its solve (the same integral; its step control weighs it less); here it "
                     "rides unscaled beside z")
    if args.poisson or args.classif:
        # the presets start the latent path at the first predicted time (the paper code's
        # decoder); the rate and the classifier read the whole path from its start, which in
        # interpolation is the same time
        generative.append("model.z0_at=start")
        if args.extrap:
            notes.append("--poisson/--classif with --extrap: the latent path starts at the "
                         "batch's first time (model.z0_at=start), not at the first predicted "
                         "time as the paper code's decoder does")
    if args.z0_encoder == "rnn":  # Encoder_z0_RNN(lstm_output_size=--rec-dims)
        return "hopper_latent_ode_rnn", [*generative, f"model.encoder.hidden={args.rec_dims}",
                                         *_labels(args, first, notes)]
    if args.z0_encoder != "odernn":
        raise PaperFlagError(f"--z0-encoder {args.z0_encoder!r}: odernn or rnn")
    return "hopper_latent_ode", [*generative, f"model.encoder.hidden={args.rec_dims}",
                                 f"model.encoder.ode_units={u}",
                                 f"model.encoder.ode_layers={args.rec_layers + 1}",
                                 f"model.encoder.gru_units={args.gru_units}",
                                 *_labels(args, first, notes)]


def _labels(args: argparse.Namespace, first: str, notes: list[str]) -> list[str]:
    if not args.classif:
        return []
    if first != "--latent-ode":
        raise PaperFlagError(f"--classif with {first}: only the latent ODE has a label head "
                             "here (the baselines reconstruct and forecast); run_models.py "
                             f"takes {first} before --latent-ode, so give --latent-ode alone")
    if args.linear_classif:
        notes.append("--linear-classif: the classifier here is two ReLU layers of "
                     "model.label_units (the paper code's default one); no linear option")
    # PhysioNet's in-hospital death: one binary label per series, cross-entropy weight 100
    # beside the reconstruction (train_classif_w_reconstr), as model.label_weight's default
    return ["model.n_labels=1"]


def _share_or_count(s: float | None) -> tuple[str, str]:
    """``-s`` as (fraction, count): a share in (0, 1], else a number of points."""
    if s is None:
        return "1.0", "null"
    if s <= 1:
        return repr(s), "null"
    return "null", str(int(s))


def _data(args: argparse.Namespace, first: str, notes: list[str]) -> list[str]:
    fraction, count = _share_or_count(args.sample_tp)
    if args.dataset == "hopper":
        task = "hopper_extrap" if args.extrap else "hopper_interp"
        if args.n > 10_000:
            notes.append(f"-n {args.n}: the hopper file holds 10,000 trajectories; the paper "
                         "code takes them all (its [:n]), and so does this run")
        out = [f"experiment={task}", f"data.dataset.n_trajectories={min(args.n, 10_000)}",
               # the paper code scales each channel over its whole 10,000-trajectory file
               "data.dataset.scale_trajectories=10000",
               f"data.dataset.window_seed={args.random_seed}"]
        if args.extrap:
            if count != "null":
                raise PaperFlagError(f"-s {args.sample_tp:g} with --extrap on hopper: give the "
                                     "encoder's share of the first 66 points as a fraction")
            out.append(f"observed_fraction={'null' if args.sample_tp is None else fraction}")
        else:
            out += [f"data.dataset.window={args.timepoints}",
                    f"observed_fraction={fraction}", f"data.task.count={count}"]
        _ignored(args, notes, "--max-t", "--noise-weight")
        return out
    no_validation = ["data.val_fraction=0", "data.test_fraction=0.2",
                     "trainer.limit_val_batches=0", "callbacks.model_checkpoint=null",
                     "optimized_metric=null"]
    notes.append("the paper code's split: 80% train, 20% test, no validation (so no best "
                 "checkpoint; drop data.val_fraction=0 ... optimized_metric=null to keep one)")
    if args.dataset == "periodic":
        task = "periodic_extrap" if args.extrap else "periodic_interp"
        out = [f"experiment={task}", f"data.dataset.n_series={args.n}",
               f"data.dataset.n_points={args.timepoints}", f"data.dataset.t_max={args.max_t!r}",
               f"data.dataset.noise_weight={args.noise_weight!r}",
               f"data.dataset.seed={args.random_seed}"]
        if args.extrap:  # split_data_extrap: the first half of the points to the encoder
            out += [f"data.task.count={args.timepoints // 2}", "data.task.fraction=null"]
            if count != "null":
                raise PaperFlagError(f"-s {args.sample_tp:g} with --extrap: give the encoder's "
                                     "share of the first half as a fraction")
            if args.sample_tp is not None:
                out.append(f"+data.task.subsample={fraction}")  # not in the recipe
        else:
            out += [f"data.task.fraction={fraction}", f"data.task.count={count}"]
        notes.append("periodic data: the paper's recipe (random frequencies and offsets, "
                     "U[0, 1) noise) from numpy's generator, not the same numbers as torch's")
        notes.append("periodic data are standardised here (data.scale, the default; metrics "
                     "also in data units, test/mse_data); the paper code fits them unscaled, "
                     "where both codes first carry the offset ~1 in the latent state and stay "
                     "at the mean for tens of epochs (docs/results.md)")
        return [*out, *no_validation]
    # physionet: the recipe's encoder settings (each patient on its own clock) are the latent
    # ODE's with an ODE-RNN encoder; the other models take the data and its task alone
    recipe = first == "--latent-ode" and args.z0_encoder == "odernn"
    out = (["experiment=physionet_interp", f"observed_fraction={fraction}"] if recipe else
           ["data=physionet", "task_name=physionet_interp", f"data.task.fraction={fraction}"])
    out.append(f"data.dataset.quantization={args.quantization!r}")
    if count != "null":
        raise PaperFlagError(f"-s {args.sample_tp:g} on PhysioNet: give a share in (0, 1]")
    # the paper code's data: its 41 params (descriptors as channels), set-a and set-b pooled
    # unless it classifies (only set-a has labels)
    out += ["data.dataset.variables=paper"]
    if args.classif:
        out.append("data.dataset.labels=true")
    else:
        out.append("data.dataset.subset=[a,b]")
    read = "set-a (4,000 patients)" if args.classif else "set-a and set-b (8,000 patients)"
    notes.append(f"-n {args.n}: all records of {read} are read; the paper code takes the first "
                 "-n of them" + ("" if args.classif else "; with set-a alone, add "
                                 "data.dataset.subset=a"))
    notes.append("data.dataset.variables=paper: the paper code's 41 channels (Age, Gender, "
                 "Height, ICUType observed at time 0 beside the 37 time series); its -1 "
                 "(unknown) descriptors count as observed values there, as unobserved here")
    notes.append("PhysioNet channels are standardised here (the paper code min-max scales "
                 "them)" + ("; the encoder walks each patient through its own times "
                            "(model.encoder.schedule=series, max_step=0.02), the paper code's "
                            "through the batch's union" if recipe else ""))
    _ignored(args, notes, "--max-t", "--noise-weight", "--timepoints")
    return [*out, *no_validation]


def _ignored(args: argparse.Namespace, notes: list[str], *flags: str) -> None:
    defaults = paper_parser().parse_args([])
    for flag in flags:
        name = flag.lstrip("-").replace("-", "_")
        if getattr(args, name) != getattr(defaults, name):
            notes.append(f"{flag}: not read for --dataset {args.dataset} (nor by the paper code)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print (or with ``--run``, run) the latentode-train command."""
    parser = argparse.ArgumentParser(
        prog="latentode-from-paper", description=__doc__.split("\n\n")[0],
        usage="latentode-from-paper [--run] -- <run_models.py arguments> [-- <latentode-train "
              "overrides>]")
    parser.add_argument("--run", action="store_true", help="run it instead of printing it")
    parser.add_argument("paper_args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    paper_args = opts.paper_args[1:] if opts.paper_args[:1] == ["--"] else opts.paper_args
    extra: list[str] = []
    if "--" in paper_args:  # latentode-train's own overrides after a second -- (trainer=gpu)
        cut = paper_args.index("--")
        paper_args, extra = paper_args[:cut], paper_args[cut + 1:]
    try:
        result = translate(paper_args)
    except PaperFlagError as error:
        print(f"latentode-from-paper: {error}", file=sys.stderr)
        return 2
    result.overrides += extra
    for note in result.notes:
        print(f"# {note}", file=sys.stderr)
    if not opts.run:
        print(result.command())
        return 0
    return subprocess.call([sys.executable, "-m", "latentode.cli.train", *result.overrides])


if __name__ == "__main__":
    raise SystemExit(main())
