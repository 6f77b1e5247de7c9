#!/usr/bin/env bash
# Run the whole pipeline for one model, in the foreground or in the background.
#
#   script/run_full_pipeline.sh --model tiny                  # foreground (make pipeline)
#   script/run_full_pipeline.sh --model medgemma-4b --background [--epochs-00 1 --epochs-01 3 --epochs-02 5]
#   script/run_full_pipeline.sh --model medgemma-4b --skip-00 --background   # start at train_01
#   script/run_full_pipeline.sh --data-only                   # data stages only (make data)
#   script/run_full_pipeline.sh --model medgemma-4b --status  # progress file + pid state
#   script/run_full_pipeline.sh --model medgemma-4b --stop    # stop it and its children
#   script/run_full_pipeline.sh --model tiny --dry-run        # list the stages and commands
#   script/run_full_pipeline.sh --model medgemma-27b --launch zero3 --nproc 4   # trainers under accelerate
#   other options: --epochs N (every stage), --max-samples N, --force (rerun finished stages),
#   --text-mb MB (download cap of each text corpus; default 500, 0 = whole),
#   --dict-dir DIR (your medical dictionaries; required for a MedGemma run) or --allow-sample-dicts,
#   --strict (quality gates stop the run instead of reporting and going on)
#
# Stages: data (download, refine, verify, test exclusion, Korean proficiency) -> KorMedMCQA of the
# untrained base -> add LoRA -> train_00 (plain text) -> train_01_with_00_monitor (dictionary) ->
# add a second LoRA -> train_02 (MCQ with reasoning) -> KorMedMCQA of the final adapter -> summary.
# Files: logs/pipeline_<MODEL>.log (everything printed), logs/progress_<MODEL>.txt (stage i/n,
# step, loss, last eval, ETA), logs/pipeline_<MODEL>.pid (while running). A second start for the
# same model is refused while one runs; a PID file left by a dead run is cleaned up. Stages that
# finished are skipped on a restart: a data stage when its inputs, code and command are unchanged
# (data/.stages/<stage>.json), a trained one when its output is there (training stages resume from
# their last checkpoint); --force reruns them all. script/stage_runner.py runs the stages, each
# its own process; a registry entry may run some side by side (logs/stages/<stage>.log).
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
EPOCHS="${EPOCHS:-}"  # epochs of every training stage (default: per stage, below)
EPOCHS_00="${EPOCHS_00:-}"
EPOCHS_01="${EPOCHS_01:-}"
EPOCHS_02="${EPOCHS_02:-}"
SKIP_00="${SKIP_00:-0}"
LAUNCH="${LAUNCH:-}"  # a configs/accelerate/<LAUNCH>.yaml to run the trainers under (ddp, fsdp, zero2, zero3)
NPROC="${NPROC:-}"
DRY_RUN=0
MAX_SAMPLES="${MAX_SAMPLES:-}"
TEXT_MB="${TEXT_MB:-}"  # download cap of each text corpus in MB (default: the registry's 500; 0: whole)
DICT_DIR="${DICT_DIR:-}"  # holds 01_medical_dict/{korean_medical_dict,char_dict}.jsonl (README, "Dictionaries")
ALLOW_SAMPLE_DICTS="${ALLOW_SAMPLE_DICTS:-0}"
STRICT="${STRICT:-0}"  # 1: the data quality gates (refine rejects, Korean proficiency, leakage) stop the run

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --background) BACKGROUND=1; shift ;;
    --epochs) EPOCHS="$2"; shift 2 ;;
    --epochs-00) EPOCHS_00="$2"; shift 2 ;;
    --epochs-01) EPOCHS_01="$2"; shift 2 ;;
    --epochs-02) EPOCHS_02="$2"; shift 2 ;;
    --skip-00) SKIP_00=1; shift ;;
    --launch) LAUNCH="$2"; shift 2 ;;
    --nproc) NPROC="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --max-samples) MAX_SAMPLES="$2"; shift 2 ;;
    --text-mb) TEXT_MB="$2"; shift 2 ;;
    --dict-dir) DICT_DIR="$2"; shift 2 ;;
    --allow-sample-dicts) ALLOW_SAMPLE_DICTS=1; shift ;;
    --strict) STRICT=1; shift ;;
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
  # Alive and still this script: after a reboot the number may belong to an unrelated process.
  if [[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" -gt 1 ] && kill -0 "$pid" 2>/dev/null \
     && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q run_full_pipeline; then
    echo "$pid"; return 0
  fi
  echo "removing stale pid file $PID_FILE (process ${pid:-?} is gone or is not a pipeline)" >&2
  rm -f "$PID_FILE"
  return 1
}

descendants() { local child; for child in $(pgrep -P "$1" 2>/dev/null); do descendants "$child"; echo "$child"; done; }
alive() {  # any of the pids still running (a zombie waiting to be reaped counts as gone)
  local p state
  for p in "$@"; do
    state="$(ps -o stat= -p "$p" 2>/dev/null || true)"
    [ -n "$state" ] && [ "${state:0:1}" != Z ] && return 0
  done
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
      # The whole tree, children first: a background run is its own process group, a foreground
      # one shares the terminal's, so the group alone is not enough.
      tree="$(descendants "$pid") $pid"
      kill -TERM -- "-$pid" 2>/dev/null || true
      kill -TERM $tree 2>/dev/null || true
      for _ in $(seq 1 30); do alive $tree || break; sleep 1; done
      alive $tree && { kill -KILL -- "-$pid" 2>/dev/null; kill -KILL $tree 2>/dev/null; } || true
      rm -f "$PID_FILE"
    else
      echo "no pipeline running for $MODEL"
    fi
    exit 0 ;;
esac

# Which stages run, with which arguments, and which finished: script/pipeline_stages.py (per-model
# settings are registry fields). Checked before anything starts (a background run too), so a mistake
# is reported here.
[ -n "$DICT_DIR" ] && [ -d "$DICT_DIR" ] && DICT_DIR="$(cd "$DICT_DIR" && pwd)"  # the stages run from the checkout
plan_args=(--model "$MODEL" --python "$PYTHON")
[ "$DATA_ONLY" = 1 ] && plan_args+=(--data-only)
[ "$SKIP_00" = 1 ] && plan_args+=(--skip-00)
[ -n "$EPOCHS" ] && plan_args+=(--epochs "$EPOCHS")
[ -n "$EPOCHS_00" ] && plan_args+=(--epochs-00 "$EPOCHS_00")
[ -n "$EPOCHS_01" ] && plan_args+=(--epochs-01 "$EPOCHS_01")
[ -n "$EPOCHS_02" ] && plan_args+=(--epochs-02 "$EPOCHS_02")
[ -n "$LAUNCH" ] && plan_args+=(--launch "$LAUNCH")
[ -n "$NPROC" ] && plan_args+=(--nproc "$NPROC")
[ -n "$MAX_SAMPLES" ] && plan_args+=(--max-samples "$MAX_SAMPLES")
[ -n "$TEXT_MB" ] && plan_args+=(--text-mb "$TEXT_MB")
[ -n "$DICT_DIR" ] && plan_args+=(--dict-dir "$DICT_DIR")
[ "$ALLOW_SAMPLE_DICTS" = 1 ] && plan_args+=(--allow-sample-dicts)
[ "$STRICT" = 1 ] && plan_args+=(--strict)
plan() { (cd "$ROOT" && "$PYTHON" -m script.pipeline_stages "${plan_args[@]}" "$@"); }
PLAN="$(plan --plan)" || exit 2

if [ "$ACTION" = run ] && [ "$BACKGROUND" = 1 ]; then
  if pid="$(running_pid)"; then echo "a pipeline for $MODEL is already running (pid $pid); make stop MODEL=$MODEL first" >&2; exit 1; fi
  args=(--model "$MODEL" --foreground-child "${plan_args[@]:4}")  # the plan's options after --model/--python
  [ "$FORCE" = 1 ] && args+=(--force)
  # setsid: the pipeline gets its own process group, so --stop can end it and all its children.
  setsid bash "${BASH_SOURCE[0]}" "${args[@]}" >>"$LOG_FILE" 2>&1 < /dev/null &
  for _ in $(seq 1 20); do [ -f "$PID_FILE" ] && break; sleep 0.5; done
  echo "pipeline for $MODEL started in the background (pid $(cat "$PID_FILE" 2>/dev/null || echo '?'))"
  echo "  follow: tail -f $LOG_FILE    progress: make status MODEL=$MODEL    stop: make stop MODEL=$MODEL"
  exit 0
fi

# ---- the stages ------------------------------------------------------------------------------
# Plan lines: env<TAB>NAME=VALUE (exported for every stage), stage<TAB>name<TAB>done<TAB>command.
STAGES=()
PLANNED_DONE=()
while IFS=$'\t' read -r kind first done_now command; do
  case "$kind" in
    env) export "${first?}" ;;
    stage) STAGES+=("$first|$command"); PLANNED_DONE+=("$done_now") ;;
  esac
done <<< "$PLAN"

total=${#STAGES[@]}
if [ "$DRY_RUN" = 1 ]; then
  i=0
  for entry in "${STAGES[@]}"; do
    i=$((i + 1)); name="${entry%%|*}"
    if [ "$FORCE" = 0 ] && [ "${PLANNED_DONE[$((i - 1))]}" = 1 ]; then state="done, would skip"; else state="would run"; fi
    echo "[$i/$total] $name ($state): ${entry#*|}"
  done
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

echo "=== pipeline for $MODEL: $total stages, started $(date -Is) (pid $$)"
# In order, a finished stage skipped, each in its own process; the progress file names the stage
# running (script/stage_runner.py).
run_args=(--run)
[ "$FORCE" = 1 ] && run_args+=(--force)
plan "${run_args[@]}" || exit 1
echo "=== pipeline for $MODEL finished $(date -Is)"
