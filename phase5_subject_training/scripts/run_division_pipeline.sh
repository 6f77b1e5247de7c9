#!/usr/bin/env bash
# Phase 5 division pipeline: add divisions -> validate/fix -> check -> organize -> train with tracking.
#
#   bash phase5_subject_training/scripts/run_division_pipeline.sh                 # tiny, lexical annotator (make divisions)
#   bash phase5_subject_training/scripts/run_division_pipeline.sh --model medgemma-4b --device cuda:0 --epochs 3
#   bash phase5_subject_training/scripts/run_division_pipeline.sh --model-scorer --annotate-device cuda:1
#   bash phase5_subject_training/scripts/run_division_pipeline.sh --per-type      # = run_pipeline.sh
#   PYTHON=.venv/bin/python bash phase5_subject_training/scripts/run_division_pipeline.sh --skip-train
#
# Steps and outputs (data dir: data/division_added, under MEDGEMMA_KOREAN_HOME when set):
#   1 add_divisions_to_reviewed.py  data/refined_clean/<type>/{train,validation}.jsonl -> <data dir>/<type>/
#   2 validate_divisions.py --fix   every annotated file, in place
#   3 check_divisions.py --all      the quality report (stdout, <data dir>/division_check.json)
#   4 organize_by_division.py       <data dir>/<division>/{train,validation}.jsonl, metadata.json, division_index.json
#   5 train_with_divisions.py       on <data dir>/<train set>/ -> model/divisions/<train set>/
#                                   (division_report.json, division_report.png, final/, training_info.json)
# With --per-type (the guide's first layout), per type T instead: annotate_divisions.py into
# data/division/T/, validate_divisions.py --fix, train_with_divisions.py -> model/divisions/T/.
# Options:
#   --model M            model to train (default: $MODEL or tiny); --device D, --epochs N, --lr X, --max-steps N
#                        (tiny without --epochs/--max-steps trains 30 steps)
#   --train-set S        type or division folder to train on (default: type1_text)
#   --types "T ..."      with --per-type: the types to run (default: all four)
#   --model-scorer       add the model stage to the annotator; --annotate-model M (default: the trained model),
#                        --annotate-device D
#   --min-samples N      smallest division that gets a folder (default: 10)
#   --resume             continue interrupted annotation and training
#   --skip-train         annotate, validate, check and organize only
set -euo pipefail

PYTHON="${PYTHON:-python}"
repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"

model="${MODEL:-tiny}"
train_set="type1_text"
types="type1_text type2_text_reasoning type3_word type4_word_reasoning"
min_samples=10
per_type=0
skip_train=0
annotate_args=()
train_args=()
annotate_model=""
epochs_or_steps=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --device|--lr) train_args+=("$1" "$2"); shift 2 ;;
        --epochs|--max-steps) train_args+=("$1" "$2"); epochs_or_steps=1; shift 2 ;;
        --train-set) train_set="$2"; shift 2 ;;
        --types) types="$2"; shift 2 ;;
        --per-type) per_type=1; shift ;;
        --model-scorer) annotate_args+=("$1"); shift ;;
        --annotate-model) annotate_model="$2"; shift 2 ;;
        --annotate-device) annotate_args+=(--device "$2"); shift 2 ;;
        --min-samples) min_samples="$2"; shift 2 ;;
        --resume) annotate_args+=(--resume); train_args+=(--resume); shift ;;
        --skip-train) skip_train=1; shift ;;
        -h|--help) awk 'NR > 1 && /^set -euo/ {exit} NR > 1' "$0"; exit 0 ;;
        *) echo "run_division_pipeline.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ "$model" == tiny* && $epochs_or_steps -eq 0 ]]; then
    train_args+=(--max-steps 30)  # the embedded model: a smoke-sized run
fi
annotate_args+=(--no-progress --model "${annotate_model:-$model}")
mod="phase5_subject_training.scripts"
read -r source_dir division_dir data_dir < <("$PYTHON" -c '
from script.training_config import CLEAN_DIR
from phase5_subject_training.divisions import DIVISION_ADDED_DIR, DIVISION_DIR
print(CLEAN_DIR, DIVISION_DIR, DIVISION_ADDED_DIR)')

train() {  # train() DIR: train MODEL on DIR/{train,validation}.jsonl with division tracking
    if [[ $skip_train -eq 1 ]]; then
        echo "== training skipped (--skip-train)"
        return
    fi
    echo "== train $model with division tracking on $1"
    "$PYTHON" -m "$mod.train_with_divisions" --model "$model" \
        --train-data "$1/train.jsonl" --val-data "$1/validation.jsonl" ${train_args[@]+"${train_args[@]}"}
}

if [[ $per_type -eq 1 ]]; then
    for type_name in $types; do
        echo "== $type_name: annotate and validate -> $division_dir/$type_name/"
        for split in train validation; do
            target="$division_dir/$type_name/$split.jsonl"
            "$PYTHON" -m "$mod.annotate_divisions" --input "$source_dir/$type_name/$split.jsonl" --output "$target" \
                "${annotate_args[@]}"
            "$PYTHON" -m "$mod.validate_divisions" --input "$target" --output "$target" --fix
        done
        train "$division_dir/$type_name"
    done
    echo "== division reports: model/divisions/<type>/division_report.json (and .png)"
    exit 0
fi

echo "== 1/5 add divisions -> $data_dir/<type>/"
"$PYTHON" -m "$mod.add_divisions_to_reviewed" --type all --source-dir "$source_dir" --output-dir "$data_dir" \
    "${annotate_args[@]}"

echo "== 2/5 validate and fix"
for file in "$data_dir"/type*/train.jsonl "$data_dir"/type*/validation.jsonl; do
    [[ -f "$file" ]] || continue
    "$PYTHON" -m "$mod.validate_divisions" --input "$file" --output "$file" --fix
done

echo "== 3/5 check quality"
"$PYTHON" -m "$mod.check_divisions" --all --data-dir "$data_dir" --json "$data_dir/division_check.json"

echo "== 4/5 organize by division (min $min_samples samples)"
"$PYTHON" -m "$mod.organize_by_division" --source "$data_dir" --output "$data_dir" --min-samples "$min_samples"

echo "== 5/5"
train "$data_dir/$train_set"
