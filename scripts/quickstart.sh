#!/usr/bin/env bash
# The whole workflow at small scale on a CPU: set up .venv, generate 3,000 scenes, train a classic and a
# modern NPE on the same budget (2M samples each, the same optimizer and schedule), plot their curves
# beside the shipped next-state model's, then compare and render your fresh models beside the shipped
# next-state model, and all the shipped models together, with constant velocity and the simulator oracle.
# Times are in README.md (Quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
DATA=data/quickstart/balls_n4
BEST=pretrained/npe_next_state.pt
FRESH="checkpoints/quickstart_classic.pt checkpoints/quickstart_modern.pt"
$PY generate_dataset_4ball.py --num_scenes 3000 --out_prefix $DATA --seed 0
BUDGET="--optimizer adamw --lr 2e-3 --weight_decay 1e-4 --schedule cosine --warmup_frac 0.02 --max_grad_norm 1.0
  --batch_size 1024 --total_samples 2000000 --eval_every 100"
# --overwrite: a rerun starts over, even after an interrupted one
$PY train_npe_4ball.py --dataset_prefix $DATA $BUDGET --name quickstart_classic --metrics_csv logs/quickstart_classic.csv \
  --overwrite
$PY train_npe_4ball_modern.py --dataset_prefix $DATA --msg_dim 64 --enc_blocks 2 --dec_blocks 2 $BUDGET \
  --name quickstart_modern --metrics_csv logs/quickstart_modern.csv --overwrite
$PY plot_compare_classic_vs_modern_samples.py --csvs logs/quickstart_classic.csv logs/quickstart_modern.csv \
  pretrained/npe_next_state.csv --out_png figs/quickstart_train_val.png
echo "== Your fresh quickstart models (minutes of training) beside the shipped next-state model =="
$PY compare_rollouts_classic_vs_modern.py --ckpts $FRESH $BEST --num_scenes 200 --rollout_steps 50 \
  --out_png figs/quickstart_rollouts.png
$PY render_rollout_triple.py --ckpts $FRESH $BEST --num_scenes 2 --rollout_steps 60 --out_dir videos
echo "== The shipped pretrained models (an hour of training each) =="
$PY compare_rollouts_classic_vs_modern.py --num_scenes 200 --rollout_steps 50 --out_png figs/pretrained_rollouts.png
$PY render_rollout_triple.py --num_scenes 2 --rollout_steps 60 --out_dir videos
echo "done: figs/ (curves, rollout comparisons), videos/ (yours and the shipped models), checkpoints/, logs/"
