#!/usr/bin/env bash
# The whole workflow at small scale on a CPU (3 min 30 s on 2 idle cores, setup included): set up .venv, generate 3,000 scenes,
# train a classic and a modern NPE for a few million samples each, plot their curves, then compare your
# fresh models and the shipped pretrained ones with constant velocity and render videos of the pretrained.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
DATA=data/quickstart/balls_n4
$PY generate_dataset_4ball.py --num_scenes 3000 --out_prefix $DATA --seed 0
$PY train_npe_4ball.py --dataset_prefix $DATA --optimizer adamw --lr 2e-3 --weight_decay 1e-4 \
  --schedule cosine --warmup_frac 0.02 --batch_size 1024 --total_samples 4000000 --eval_every 200 \
  --name quickstart_classic --metrics_csv logs/quickstart_classic.csv
$PY train_npe_4ball_modern.py --dataset_prefix $DATA --msg_dim 64 --enc_blocks 2 --dec_blocks 2 \
  --batch_size 1024 --total_samples 2000000 --eval_every 100 \
  --name quickstart_modern --metrics_csv logs/quickstart_modern.csv
$PY plot_compare_classic_vs_modern_samples.py --classic_csv logs/quickstart_classic.csv \
  --modern_csv logs/quickstart_modern.csv --out_png figs/quickstart_train_val.png
echo "== Your fresh quickstart models (minutes of training) =="
$PY compare_rollouts_classic_vs_modern.py --classic_ckpt checkpoints/quickstart_classic.pt \
  --modern_ckpt checkpoints/quickstart_modern.pt --num_scenes 200 --rollout_steps 50 \
  --out_png figs/quickstart_rollouts.png
echo "== The shipped pretrained models (an hour of training each) =="
$PY compare_rollouts_classic_vs_modern.py --num_scenes 200 --rollout_steps 50 \
  --out_png figs/pretrained_rollouts.png
$PY render_rollout_triple.py --num_scenes 3 --rollout_steps 60 --out_dir videos
echo "done: figs/ (curves, rollout comparisons), videos/ (pretrained rollouts), checkpoints/, logs/"
