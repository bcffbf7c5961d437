#!/usr/bin/env bash
# The GPU path and the window-extension study's grid (configs/experiments/window.yaml) on a lent GPU, as
# one prepared command (the device tool runs it in the repository root; what it writes under $OUT comes back):
#   bash scripts/study_device.sh             data + shipped zoo; the launcher check: `laid compare --quick
#                                            --gpus N --accelerate-config configs/accelerate/fsdp.yaml` (SFT, KD
#                                            and LAid, each run launched with accelerate across the N visible
#                                            GPUs and evaluated on them; FSDP2 because the device image has no
#                                            DeepSpeed); then the window study with --device cuda, labelled
#                                            --exploratory (the device's copy of the tree has no git history to
#                                            check the preregistration's freeze against: a replication, not the
#                                            confirmatory run); study/, compare/ and the launch logs copied to $OUT
#   bash scripts/study_device.sh --dry-run   the same steps on the CPU on quick data, the launcher check as
#                                            `--gpus 8 --dry-run` (its commands, nothing launched;
#                                            tests/test_study_device.py)
# Then, here: `laid results --run-dir <returned run>` writes the results page from the returned netCDF
# files (the device image has no papermill).
# The device image (python 3.12, torch + CUDA, transformers, accelerate, peft, xarray) lacks netCDF4 and
# cftime; carry their wheels in .whl/ (git-ignored; `carry: [".whl"]`), made here with
#   pip download --python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64 netCDF4 cftime -d .whl
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import netCDF4" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --find-links .whl netCDF4 cftime
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
RUN=${RUN_DIR:-runs/device}
OUT=${OUT:-$RUN/out}
laid() { "$PY" -m laid_workflows.cli "$@"; }
start=$(date +%s)
if [ "$DRY" = 1 ]; then
  laid data synth --out "$RUN/data" --quick
  LAUNCH=(--gpus 8 --dry-run)
  ARGS=(--quick --workers 2 --device cpu --override 'students=[tiny-32b-w5-s3]'
        --override 'arms={sft: {method: sft}, kd: {method: kd}, laid: {method: laid}}')
else
  # the main job's data (configs/experiments/main.yaml): train 1-5 images, test 1-100
  laid data synth --out "$RUN/data" --train-sizes 1 2 3 4 5 --test-sizes 1 2 3 5 10 20 50 100
  # evaluations on one GPU (the toy fits); real sizes leave --device out: auto places them across the GPUs
  LAUNCH=(--gpus "${GPUS:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}" --device cuda --no-progress)
  ARGS=(--device cuda --workers "${WORKERS:-8}" --exploratory)
fi
mkdir -p "$RUN/zoo" "$OUT"
cp -r checkpoints/zoo/tiny-32b checkpoints/zoo/tiny-32b-long checkpoints/zoo/tiny-32b-w5-s3 checkpoints/zoo/tiny-32b-w5-s4 \
  checkpoints/zoo/tiny-7b-w5-s1 checkpoints/zoo/tiny-7b-w5-s2 "$RUN/zoo/"
# The launcher check, in its own run folder beside the study's (its quick evaluations are not the study's):
# one seed of SFT, KD and LAid, 2 steps each (LAid's mixers start at the overlap: FSDP shards them).
laid compare --config configs/experiments/compare.yaml --run-dir "$RUN/launcher" --override zoo_dir=../zoo \
  --override data.root=../data --quick --override 'seeds=[0]' --override 'methods=[sft, kd, laid]' \
  --override method_overrides.laid.mixer_init=overlap \
  --accelerate-config configs/accelerate/fsdp.yaml "${LAUNCH[@]}" | tee "$OUT/launcher.txt"
echo "study_device: launcher check $(( $(date +%s) - start )) s"
laid study --config configs/experiments/window.yaml --run-dir "$RUN" --no-figures "${ARGS[@]}"
# (the dry run's launcher check wrote nothing: its folders are missing from the archive)
tar -C "$RUN" -czf "$OUT/study.tgz" --exclude checkpoints --exclude budgets --exclude export --ignore-failed-read \
  study eval launcher/compare launcher/eval launcher/distill
cp "$RUN"/study/*.md "$OUT/"
echo "study_device: $(( $(date +%s) - start )) s; $OUT/study.tgz"
