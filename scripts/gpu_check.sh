#!/usr/bin/env bash
# GPU check and timings for latentode, run from the repo root on a lent GPU machine (issues #6,
# #7). Budget-aware: each step runs only if enough of DEADLINE (seconds) is left. Outputs go to
# $OUT (log.txt: the summary, steps.txt: every step's full output).
# The machine has torch/lightning but not hydra, dm_control or mujoco: carry them, built for its
# Python (3.12), in SITE (default .dev/site, e.g. `python3.12 -m pip install --target .dev/site
# --no-deps hydra-core==1.3.8 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 mujoco==3.17.0
# dm_control==1.0.50 dm-env dm-tree glfw` minus mujoco/experimental and dm_control/locomotion,
# which the hopper does not use, to fit the 64 MiB carry). PAPER_DIR (default .dev/papercode):
# a copy of github.com/YuliaRubanova/latent_ode's .py files for the paper-code timing.
# STEPS: space-separated step names to run (default: all, in the order below), e.g.
# STEPS="graph_tests graph_bench data lode_interp_graph" bash scripts/gpu_check.sh
# Next session (what is not measured yet, ~10 min with the start; carry .dev/site): the
# fused encoder walk (graph_bench prints graphed generic vs graphed fused walk), the evaluation
# graphs (tests, bench's eval column, each epoch's test pass), backprop decoder gradients (the
# hopper experiments' default now; lode_interp_graph_ckpt is the old checkpoint), the ODE-RNN graph:
# STEPS="graph_tests graph_bench data lode_interp_graph lode_interp_graph_ckpt lode_interp odernn_graph_tests odernn_graph lode_profile"
# then mixed precision (solves in float32 inside autocast, 2026-12-05; against lode_interp):
# STEPS="data lode_interp lode_interp_bf16 lode_interp_fp16"
set -u
START=$(date +%s); DEADLINE=${DEADLINE:-530}
SITE=${SITE:-.dev/site}; PAPER_DIR=${PAPER_DIR:-.dev/papercode}
export PYTHONPATH=$PWD/$SITE:$PWD PYTHONUNBUFFERED=1 MUJOCO_GL=disable
export PYTHONWARNINGS=ignore
LOG=$OUT/log.txt
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
step() {  # step NEED LIMIT name cmd...
  local need=$1 limit=$2 name=$3; shift 3
  if [[ -n "${STEPS:-}" && " $STEPS " != *" $name "* ]]; then return; fi
  local l; l=$(left)
  if (( l < need )); then echo "### SKIP $name (left ${l}s < ${need}s)"; return; fi
  (( limit > l )) && limit=$l
  echo "### START $name (limit ${limit}s, t=$(( $(date +%s) - START ))s)"
  local t0; t0=$(date +%s.%N)
  timeout "$limit" "$@" > /tmp/step.txt 2>&1; local rc=$?
  { echo "##### $name"; cat /tmp/step.txt; } >> "$OUT/steps.txt"
  tail -n 12 /tmp/step.txt
  echo "### END $name rc=$rc wall=$(python3 -c "import time;print(round(time.time()-$t0,1))")s"
}
B="python3 scripts/bench_training.py"
FULL="data.dataset.n_trajectories=10000 trainer=gpu seed=1"
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch,lightning,hydra,sys;print(sys.version.split()[0], torch.__version__, lightning.__version__, hydra.__version__, torch.cuda.get_device_name())"
nproc
step 60 150 graph_tests python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py
step 20 60 graph_sync_test python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py -k never_wait
step 30 120 graph_bench python3 scripts/bench_cuda_graph.py
step 30 90 graph_bench_rnn python3 scripts/bench_cuda_graph.py model=hopper_latent_ode_rnn
step 40 120 odernn_graph_tests python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py -k odernn
step 30 90 odernn_graph_bench python3 scripts/bench_cuda_graph.py model=hopper_odernn
step 30 60 solver_tests python3 -m pytest -q -p no:cacheprovider tests/test_solver_cuda.py
step 30 90 data python3 -c "from latentode.data.sources import hopper; x = hopper.generate(progress=False); print(x.shape)"
step 60 150 lode_interp_graph $B --protocol hopper_interp --epochs 2 --every 1 $FULL model.encoder.cuda_graph=true
step 60 150 lode_interp_graph_ckpt $B --protocol hopper_interp --epochs 2 --every 1 $FULL model.encoder.cuda_graph=true solver.gradient=checkpoint
step 50 120 lode_extrap_graph $B --protocol hopper_extrap --epochs 1 --every 1 $FULL observed_fraction=0.1 model.encoder.cuda_graph=true
step 40 90 lode_rnn_graph $B --protocol hopper_interp --epochs 1 --every 1 $FULL model=hopper_latent_ode_rnn model.encoder.cuda_graph=true
step 50 120 odernn_graph $B --protocol hopper_interp --epochs 1 --every 1 $FULL model=hopper_odernn model.cuda_graph=true
step 50 120 odernn_full $B --protocol hopper_interp --epochs 1 --every 1 $FULL model=hopper_odernn
step 100 200 lode_interp_graph5 $B --protocol hopper_interp --epochs 5 --every 1 $FULL model.encoder.cuda_graph=true
step 60 150 lode_profile python3 -m latentode.cli.train experiment=hopper_interp trainer=gpu model.encoder.cuda_graph=true data.dataset.n_trajectories=10000 trainer.max_epochs=1 trainer.limit_train_batches=60 +trainer.profiler=simple test=false callbacks.progress_bar.refresh_rate=0 hydra.run.dir=/tmp/lode_profile
step 50 120 rnn_vae_full $B --protocol hopper_interp --epochs 1 --every 1 $FULL model=hopper_rnn_vae
step 50 120 gru_dt_full $B --protocol hopper_interp --epochs 1 --every 1 $FULL model=hopper_gru_dt
step 60 150 lode_interp $B --protocol hopper_interp --epochs 2 --every 2 $FULL
step 60 150 lode_interp_bf16 $B --protocol hopper_interp --epochs 2 --every 2 $FULL +trainer.precision=bf16-mixed
step 60 150 lode_interp_fp16 $B --protocol hopper_interp --epochs 2 --every 2 $FULL +trainer.precision=16-mixed
step 60 150 paper_interp python3 scripts/bench_paper_code.py --paper-dir "$PAPER_DIR" --stop-after 1 -- -n 10000 -s 0.1 -l 15 --dataset hopper --latent-ode --rec-dims 30 --gru-units 100 --units 300 --gen-layers 3 --rec-layers 3 --random-seed 1
step 60 200 ddp_tests python3 -m pytest -q -p no:cacheprovider tests/test_ddp.py -k gpu
step 40 90 lode_interp_series $B --protocol hopper_interp --epochs 1 --every 1 $FULL model.encoder.schedule=series model.encoder.max_step=0.01
step 40 90 lode_extrap $B --protocol hopper_extrap --epochs 2 --every 2 $FULL trainer.limit_train_batches=40 observed_fraction=0.1
for m in hopper_odernn hopper_latent_ode_rnn hopper_rnn_vae hopper_gru_dt; do
  step 30 60 $m $B --protocol hopper_interp --epochs 3 --every 3 $FULL trainer.limit_train_batches=40 model=$m
done
echo "### total $(( $(date +%s) - START ))s"
} 2>&1 | tee "$LOG"
