#!/usr/bin/env bash
# Install Fashion-MNIST (real clothing photos, MIT licence) from Debian's package `dataset-fashion-mnist` when its
# IDX files are missing. Idempotent: does nothing when they are there. Needs root (or sudo) and the Debian mirror.
# Makefile use:  fashion-mnist: ; bash scripts/install_fashion_mnist.sh
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
need=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
missing=0
for f in "${need[@]}"; do [[ -f "$DIR/$f" ]] || missing=1; done
if [[ $missing == 0 ]]; then
  echo "fashion-mnist: present in $DIR"
  exit 0
fi
SUDO=""
if [[ $(id -u) != 0 ]]; then SUDO="sudo"; fi
echo "fashion-mnist: installing Debian package dataset-fashion-mnist"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
for f in "${need[@]}"; do
  [[ -f "$DIR/$f" ]] || { echo "fashion-mnist: $DIR/$f still missing after install" >&2; exit 1; }
done
echo "fashion-mnist: installed in $DIR"
