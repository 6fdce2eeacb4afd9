#!/usr/bin/env bash
# The CPU runs behind docs/results.md (ml-100k / ml-latest-small from RECBENCH_DATA). Each block is
# one Hydra sweep recorded to outputs/mlflow.db; `python -m recbench.report --experiment NAME`
# turns it into the tables quoted in docs/results.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export RECBENCH_DATA=${RECBENCH_DATA:-../shared/data}
common="train.progress=false"
case "${1:-all}" in
  rating|all)
    $PY -m recbench.run -m model=dot_bias dataset=ml-100k,ml-latest-small seed=0,1,2 \
      tracking.experiment=dot_bias_ratings $common ;;&
  keras|all)
    $PY -m recbench.run -m +experiment=keras_full dataset=ml-100k seed=0,1,2 $common
    $PY -m recbench.run -m +experiment=keras_qr_md dataset=ml-100k 'method.block_sizes=[400,800,null]' \
      seed=0,1,2 $common ;;&
  bloom|all)
    $PY -m recbench.run -m +experiment=bloom_hashes $common
    $PY -m recbench.run -m +experiment=bloom_full seed=0,1,2 $common ;;&
  table3|all)
    $PY -m recbench.run -m +experiment=mgqe_table3_small $common ;;
esac
