#!/usr/bin/env bash
# Run the whole pipeline for one model, in the foreground or in the background.
#
#   script/run_full_pipeline.sh --model tiny                  # foreground (make pipeline)
#   script/run_full_pipeline.sh --model medgemma-4b --background [--epochs N] [--max-samples N] [--force]
#   script/run_full_pipeline.sh --data-only                   # data stages only (make data)
#   script/run_full_pipeline.sh --model medgemma-4b --status  # progress file + pid state
#   script/run_full_pipeline.sh --model medgemma-4b --stop    # stop it and its children
#
# Files: logs/pipeline_<MODEL>.log (everything printed), logs/progress_<MODEL>.txt (stage i/n,
# step, loss, last eval, ETA), logs/pipeline_<MODEL>.pid (while running). A second start for the
# same model is refused while one runs; a PID file left by a dead run is cleaned up. Stages that
# finished are skipped on a restart (training stages resume from their last checkpoint).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${MEDGEMMA_KOREAN_HOME:-$ROOT}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

MODEL="${MODEL:-tiny}"
ACTION=run
BACKGROUND=0
FORCE=0
DATA_ONLY=0
EPOCHS="${EPOCHS:-}"  # epochs of every training stage (default: each script's own)
MAX_SAMPLES="${MAX_SAMPLES:-}"

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --background) BACKGROUND=1; shift ;;
    --epochs) EPOCHS="$2"; shift 2 ;;
    --max-samples) MAX_SAMPLES="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    --data-only) DATA_ONLY=1; shift ;;
    --status) ACTION=status; shift ;;
    --stop) ACTION=stop; shift ;;
    --foreground-child) ACTION=child; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

LOG_DIR="$HOME_DIR/logs"
LOG_FILE="$LOG_DIR/pipeline_${MODEL}.log"
PID_FILE="$LOG_DIR/pipeline_${MODEL}.pid"
LOCK_FILE="$LOG_DIR/pipeline_${MODEL}.lock"
PROGRESS_FILE="$LOG_DIR/progress_${MODEL}.txt"
mkdir -p "$LOG_DIR"

running_pid() {  # prints the pid of a live pipeline for MODEL, cleans a stale pid file
  [ -f "$PID_FILE" ] || return 1
  local pid; pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; return 0; fi
  echo "removing stale pid file $PID_FILE (process ${pid:-?} is gone)" >&2
  rm -f "$PID_FILE"
  return 1
}

case "$ACTION" in
  status)
    if pid="$(running_pid)"; then echo "pipeline for $MODEL: running (pid $pid)"; else echo "pipeline for $MODEL: not running"; fi
    if [ -f "$PROGRESS_FILE" ]; then cat "$PROGRESS_FILE"; else echo "(no progress file $PROGRESS_FILE yet)"; fi
    exit 0 ;;
  stop)
    if pid="$(running_pid)"; then
      echo "stopping pipeline for $MODEL (pid $pid and its children)"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
      rm -f "$PID_FILE"
    else
      echo "no pipeline running for $MODEL"
    fi
    exit 0 ;;
esac

if [ "$ACTION" = run ] && [ "$BACKGROUND" = 1 ]; then
  if pid="$(running_pid)"; then echo "a pipeline for $MODEL is already running (pid $pid); make stop MODEL=$MODEL first" >&2; exit 1; fi
  args=(--model "$MODEL" --foreground-child)
  [ -n "$EPOCHS" ] && args+=(--epochs "$EPOCHS")
  [ -n "$MAX_SAMPLES" ] && args+=(--max-samples "$MAX_SAMPLES")
  [ "$FORCE" = 1 ] && args+=(--force)
  [ "$DATA_ONLY" = 1 ] && args+=(--data-only)
  # setsid: the pipeline gets its own process group, so --stop can end it and all its children.
  setsid bash "${BASH_SOURCE[0]}" "${args[@]}" >>"$LOG_FILE" 2>&1 < /dev/null &
  for _ in $(seq 1 20); do [ -f "$PID_FILE" ] && break; sleep 0.5; done
  echo "pipeline for $MODEL started in the background (pid $(cat "$PID_FILE" 2>/dev/null || echo '?'))"
  echo "  follow: tail -f $LOG_FILE    progress: make status MODEL=$MODEL    stop: make stop MODEL=$MODEL"
  exit 0
fi

# ---- foreground run (also the body of a background run) -------------------------------------
exec 9>"$LOCK_FILE"
if ! flock -n 9; then
  echo "a pipeline for $MODEL is already running ($(cat "$PID_FILE" 2>/dev/null || echo 'pid unknown')); refusing to start a second" >&2
  exit 1
fi
running_pid >/dev/null 2>&1 || true  # cleans a stale pid file
echo $$ > "$PID_FILE"
trap 'rm -f "$PID_FILE"' EXIT
if [ "$ACTION" = run ]; then  # foreground: print and keep a copy in the log
  exec > >(tee -a "$LOG_FILE") 2>&1
fi

export MODEL HF_HUB_DISABLE_TELEMETRY=1
OFFLINE_DATA=0
# The embedded model trains 2 epochs per stage by default, so the whole pipeline stays within a few
# minutes on a 2-core CPU; EPOCHS=N overrides it.
case "$MODEL" in tiny|tiny-*) OFFLINE_DATA=1; EPOCHS="${EPOCHS:-2}"; export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 ;; esac
[ "${HF_HUB_OFFLINE:-0}" = 1 ] && OFFLINE_DATA=1

# Stages: name | command. A stage is listed only when its script exists in this checkout.
STAGES=()
add_stage() { local file="$1"; shift; [ -e "$ROOT/$file" ] && STAGES+=("$*"); return 0; }
[ "$DATA_ONLY" = 0 ] && case "$MODEL" in tiny|tiny-*) add_stage script/make_tiny_model.py "tiny_model|$PYTHON -m script.make_tiny_model" ;; esac
if [ "$OFFLINE_DATA" = 1 ]; then
  add_stage script/download_all_datasets.py "download|$PYTHON -m script.download_all_datasets --from-dir $ROOT/data/sample"
else
  add_stage script/download_all_datasets.py "download|$PYTHON -m script.download_all_datasets"
fi
add_stage refine_scripts/refine_4types.py "refine|$PYTHON -m refine_scripts.refine_4types"
add_stage refine_scripts/refine_plain_text.py "refine_plain_text|$PYTHON -m refine_scripts.refine_plain_text"
add_stage refine_scripts/refine_dictionaries.py "refine_dictionaries|$PYTHON -m refine_scripts.refine_dictionaries"
add_stage refine_scripts/refine_kor_med_test.py "refine_kor_med_test|$PYTHON -m refine_scripts.refine_kor_med_test"
add_stage refine_scripts/verify_formats.py "verify|$PYTHON -m refine_scripts.verify_formats"
add_stage script/run_test_exclusion.sh "test_exclusion|PYTHON=$PYTHON bash $ROOT/script/run_test_exclusion.sh"
add_stage script/validate_korean_proficiency.py "korean_proficiency|$PYTHON -m script.validate_korean_proficiency --all"

# Training in the guide's recommended order; each type continues the previous type's adapter.
train_args="--model $MODEL --resume"
[ -n "$MAX_SAMPLES" ] && train_args+=" --max-samples $MAX_SAMPLES"
[ -n "$EPOCHS" ] && train_args+=" --epochs $EPOCHS"
previous=""
[ "$DATA_ONLY" = 1 ] && TRAIN_TYPES="" || TRAIN_TYPES="type1_text type2_text_reasoning type3_word"
for type in $TRAIN_TYPES; do
  args="$train_args"
  [ -n "$previous" ] && args+=" --base-model $HOME_DIR/model/$previous/$MODEL/final"
  add_stage "script/train/train_${type}.py" "train_${type}|$PYTHON -m script.train.train_${type} $args"
  [ -e "$ROOT/script/train/train_${type}.py" ] && previous="$type"
done

# KorMedMCQA on the guide's 604 set (letter mode): the untrained base, then the final adapter.
if [ "$DATA_ONLY" = 0 ] && [ -n "$previous" ]; then
  add_stage script/validation_kor_med_test.py "evaluate_base|$PYTHON -m script.validation_kor_med_test --model $MODEL --split guide604 --output $HOME_DIR/logs/kormedmcqa_${MODEL}_base.json"
  add_stage script/validation_kor_med_test.py "evaluate_final|$PYTHON -m script.validation_kor_med_test --model $HOME_DIR/model/$previous/$MODEL/final --split guide604 --output $HOME_DIR/logs/kormedmcqa_${MODEL}_final.json"
fi

stage_done() {  # a training stage is done when its run record exists; data stages always rerun
  case "$1" in
    train_*) [ -f "$HOME_DIR/model/${1#train_}/$MODEL/training_info.json" ] ;;
    *) return 1 ;;
  esac
}

total=${#STAGES[@]}
echo "=== pipeline for $MODEL: $total stages, started $(date -Is) (pid $$)"
cd "$ROOT"
i=0
for entry in "${STAGES[@]}"; do
  i=$((i + 1))
  name="${entry%%|*}"; cmd="${entry#*|}"
  export PIPELINE_STAGE="$i/$total $name"
  if [ "$FORCE" = 0 ] && stage_done "$name"; then
    echo "=== [$i/$total] $name: already finished, skipped (--force reruns it)"
    continue
  fi
  printf 'pipeline: %s\nstage: %s\nstarted: %s\n' "$MODEL" "$PIPELINE_STAGE" "$(date -Is)" > "$PROGRESS_FILE"
  echo "=== [$i/$total] $name: $cmd"
  start=$(date +%s)
  if ! bash -c "$cmd"; then
    echo "=== [$i/$total] $name FAILED after $(( $(date +%s) - start ))s; fix the error above and rerun (finished stages are skipped)" >&2
    printf 'pipeline: %s\nstage: %s\nstatus: failed\n' "$MODEL" "$PIPELINE_STAGE" > "$PROGRESS_FILE"
    exit 1
  fi
  echo "=== [$i/$total] $name done in $(( $(date +%s) - start ))s"
done
printf 'pipeline: %s\nstage: %s/%s done\nstatus: finished %s\n' "$MODEL" "$total" "$total" "$(date -Is)" > "$PROGRESS_FILE"
echo "=== pipeline for $MODEL finished $(date -Is)"
