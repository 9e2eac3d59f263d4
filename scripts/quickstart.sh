#!/usr/bin/env bash
# The main job on a fresh machine: Fashion-MNIST from Debian, a venv, the package, then
# `robustmix experiment --preset quick` (train none/mixup/cutmix/robustmix, evaluate on clean data
# and the 19 corruptions, frequency diagnostics, report). Extra arguments go to the experiment.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist \
    || echo "could not install dataset-fashion-mnist; pass --data-dir DIR with the four IDX files" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[cli]"

OUT="${OUT:-runs/quick}"
robustmix experiment --preset quick --out "$OUT" "$@"
echo "report: $OUT/report.html  (and $OUT/report.md)"
