#!/usr/bin/env bash
# The equal-budget comparison (issue 5): ConvEntion and the recurrent baselines trained under one protocol
# (the default config with 60-frame windows instead of 99 and stage 1 cut to 8 epochs x 2,000 draws = 16,000 growing-prefix
# draws so the 1.4M-parameter CNN+RNN nets fit this 2-core CPU), for ugriz and for g only, then `compare`
# (which adds the light-curve baseline on the same folds). The three nets train side by side, one thread each.
# Usage: bash broker_plugin_train/run_comparison.sh [ugriz|g]...   (default: both)
set -euo pipefail
PY=${PY:-.venv/bin/python}
CONFIG=broker_plugin_train/configs/default.toml
PROTOCOL=(--training.pretrain.epochs=8 --training.pretrain.max_train_frames=60 --training.threads=1)

bands_args() { if [ "$1" = g ]; then echo "--training.data.bands=[\"g\"]"; fi; }

window_args() {  # the default's 60-frame window: 20 chunks of 3 for ConvEntion, 60 one-frame steps for CNN+RNN
  if [ "$1" = convention-small ]; then echo "--training.net.args={max_chunks=20}"
  else echo "--training.net.args={max_chunks=60}"; fi
}

train_net() {  # net, bands
  local run="runs/compare-$2/$1"
  "$PY" -m train all --config "$CONFIG" --training.net.name="$1" $(window_args "$1") --training.run_dir="$run" \
    --training.model_dir="$run/model" "${PROTOCOL[@]}" $(bands_args "$2") > "$run.log" 2>&1
}

for bands in ${@:-ugriz g}; do
  mkdir -p "runs/compare-$bands"
  train_net convention-small "$bands" &
  train_net cnn-gru "$bands" &
  train_net cnn-lstm "$bands" &
  wait
  "$PY" -m train compare --config "$CONFIG" "${PROTOCOL[@]}" $(bands_args "$bands") \
    --training.model_dir="runs/compare-$bands/convention-small/model" \
    --training.run_dir="runs/compare-$bands/convention-small" \
    --runs "runs/compare-$bands/cnn-gru" "runs/compare-$bands/cnn-lstm"
done
