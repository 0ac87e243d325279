#!/usr/bin/env bash
# End-to-end style pipeline on the generated style data (CPU): baseline, teacher, KD student, 3-fold OOF runs,
# gather, OOF student; then src.eval of each final checkpoint. Run from the repo root:
#   bash experiments/style_oof/run.sh [EPOCHS [IMAGE_SIZE [BATCH [OUT]]]]
# (defaults: 15 epochs, 64 px (the generated size), batch 32, outputs/style_e2e; ~33 min on 2 busy cores)
set -euo pipefail
EPOCHS=${1:-15}
SIZE=${2:-64}
BATCH=${3:-32}
OUT=${4:-outputs/style_e2e}
PY=.venv/bin/python
# One thread: on a shared, oversubscribed machine OpenMP spin-waiting made 2 threads ~10x slower than 1.
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONHASHSEED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
COMMON=(trainer.max_epochs=$EPOCHS data.image_size=$SIZE data.batch_size=$BATCH callbacks.progress_bar=null +trainer.enable_progress_bar=false)

run() { local name=$1; shift; echo ">> $name"; $PY -m src.train "$@" "${COMMON[@]}" hydra.run.dir=$OUT/$name; }

run cutmix experiment=mnv3s_style_cutmix
run teacher experiment=effb1_style_teacher
run kd experiment=mnv3s_style_kd model.teacher.ckpt_path=$OUT/teacher/checkpoints/avg_last3.ckpt
echo ">> oof folds"
$PY -m src.train -m experiment=mnv3s_style_oof_fold data.fold=0,1,2 "${COMMON[@]}" hydra.sweep.dir=$OUT/oof_folds
ROOT=$($PY -c "from src.data.style_world import StyleWorld; print(StyleWorld('data/style_world').root)")
$PY scripts/gather_oof.py $OUT/oof_folds --out $OUT/oof_soft_labels.npz --train-list $ROOT/lists/train.txt
run oof_student experiment=mnv3s_style_oof data.soft_labels=$OUT/oof_soft_labels.npz
for name in cutmix teacher kd oof_student; do
  for ck in best avg_last3; do
    if [[ $ck == best ]]; then
      CK=$($PY -c "import json; print(json.load(open('$OUT/$name/train_summary.json'))['best_ckpt_path'])")
    else
      CK=$OUT/$name/checkpoints/avg_last3.ckpt
    fi
    $PY -m src.eval ckpt_path=$CK report_dir=$OUT/eval/${name}_$ck hydra.run.dir=$OUT/eval/${name}_$ck
  done
done
$PY -m src.eval ckpt_path=$OUT/oof_student/checkpoints/avg_last3.ckpt report_dir=$OUT/eval/oof_student_avg_tta \
  hydra.run.dir=$OUT/eval/oof_student_avg_tta +model_overrides.tta_hflip=true
echo ">> done"
