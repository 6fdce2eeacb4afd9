#!/usr/bin/env bash
# The GPU runs behind docs/results.md (SASRec tables; data under RECBENCH_DATA). Runs are recorded
# to run folders (MLflow is optional there: tracking=none) and summarised with
#   python -m recbench.report --runs-dir outputs/multirun/<sweep> --name NAME --no-mlflow
# Several runs share the GPU through the joblib launcher (N_JOBS processes).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
N_JOBS=${N_JOBS:-6}
export RECBENCH_DATA=${RECBENCH_DATA:-data}
common=(tracking=none train.progress=false eval.serving_artifact=false train.device=cuda
        hydra/launcher=joblib hydra.launcher.n_jobs=$N_JOBS)
case "${1:-all}" in
  sasrec_amazon|all)
    # SASRec, both losses, full ranking and the sampled protocol, 3 seeds; at most 100 epochs with
    # early stopping after 20 epochs without validation NDCG@10 gain (the paper: 200 epochs).
    $PY -m recbench.run -m model=sasrec dataset=amazon-games train.loss=${LOSSES:-bce,ce} train.epochs=100 \
      eval.protocol=full,sampled seed=0,1,2 hydra.sweep.dir=outputs/multirun/sasrec_amazon${SUFFIX:-} "${common[@]}" ;;&
  sasrec_ml100k|all)
    $PY -m recbench.run -m model=sasrec dataset=ml-100k train.loss=bce,ce \
      eval.protocol=full,sampled seed=0,1,2 hydra.sweep.dir=outputs/multirun/sasrec_ml100k "${common[@]}" ;;&
  gmf_seq|all)
    # GMF on the same data and protocols, the comparison SASRec must beat.
    # Training pinned to the settings these figures were made with (GMF's defaults changed since).
    $PY -m recbench.run -m model=gmf dataset=amazon-games eval.protocol=full,sampled seed=0,1,2 \
      train.epochs=20 train.batch_size=256 train.lr=0.001 train.weight_decay=0 train.num_negatives=4 train.patience=0 \
      hydra.sweep.dir=outputs/multirun/gmf_seq "${common[@]}" ;;&
  table4|all)
    # mgqe_table4 on ml-100k: SASRec x full, low rank 48, SQ 8 bits, DPQ, MGQE; 3 seeds, 200 epochs.
    $PY -m recbench.run -m +experiment=mgqe_table4 dataset=ml-100k seed=0,1,2 \
      hydra.sweep.dir=outputs/multirun/table4 "${common[@]}" ;;
esac
