#!/usr/bin/env bash
# Phase 5 per-type pipeline (the guide's run_pipeline.sh): for each training type T,
# annotate -> validate/fix -> train with division tracking.
#
#   bash phase5_subject_training/scripts/run_pipeline.sh                           # tiny, all four types
#   bash phase5_subject_training/scripts/run_pipeline.sh --model medgemma-4b --device cuda:0 --epochs 3
#   bash phase5_subject_training/scripts/run_pipeline.sh --types "type1_text type3_word" --model-scorer --annotate-device cuda:1
#
# Per type T (data dir: data/division, under MEDGEMMA_KOREAN_HOME when set):
#   annotate_divisions.py    data/refined_clean/T/{train,validation}.jsonl -> data/division/T/{train,validation}.jsonl
#   validate_divisions.py    --fix, in place
#   train_with_divisions.py  -> model/divisions/T/ (final/, division_report.json, division_report.png)
# It is run_division_pipeline.sh --per-type; the options are that script's (--help lists them):
# --model, --device, --epochs, --lr, --max-steps, --types, --model-scorer, --annotate-model,
# --annotate-device, --resume, --skip-train.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    awk 'NR > 1 && /^set -euo/ {exit} NR > 1' "$0"
    exit 0
fi
exec bash "$(dirname "$0")/run_division_pipeline.sh" --per-type "$@"
