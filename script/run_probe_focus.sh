#!/usr/bin/env bash
# Probe-and-focus training (script/train/train_probe_and_focus.py) with its output logged.
#
#   bash script/run_probe_focus.sh                                   # MODEL or tiny, the guide's defaults
#   bash script/run_probe_focus.sh --model medgemma-27b --probe-steps 30 --focus-steps 50 \
#       --min-improvement 1.0 --target 90.0 --device cuda:0
#   bash script/run_probe_focus.sh --model medgemma-4b --resume      # continue after a stop or kill
#   PYTHON=python3 bash script/run_probe_focus.sh --help             # every option of the trainer
#
# Every option goes to the trainer unchanged (--target is --target-accuracy). Everything printed
# is also appended to logs/probe_focus_<MODEL>.log; outputs land in
# model/probe_focus_training/<MODEL>/ (final/, final_report.json, failed_questions.json).
# Uses .venv/bin/python when the checkout has one, else python3 (override with PYTHON=...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${MEDGEMMA_KOREAN_HOME:-$ROOT}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
# `-m script.…` from any folder, without changing the meaning of the user's relative paths.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

MODEL="${MODEL:-tiny}"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    -h|--help)
      sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      echo
      exec "$PYTHON" -m script.train.train_probe_and_focus --help ;;
    --model) MODEL="${args[$((i + 1))]:-$MODEL}" ;;
    --model=*) MODEL="${args[$i]#--model=}" ;;
  esac
done

LOG_DIR="$HOME_DIR/logs"
LOG_FILE="$LOG_DIR/probe_focus_${MODEL}.log"
mkdir -p "$LOG_DIR"
echo "== probe-and-focus training: $MODEL (log: $LOG_FILE)"
# Plain python, or accelerate's launcher when LAUNCH names a config of configs/accelerate/ (DDP).
TRAIN=("$PYTHON" -m)
if [ -n "${LAUNCH:-}" ]; then
  launch_config="$ROOT/configs/accelerate/$LAUNCH.yaml"
  [ -f "$launch_config" ] || { echo "LAUNCH=$LAUNCH: no $launch_config" >&2; exit 2; }
  TRAIN=("$PYTHON" -m accelerate.commands.launch --config_file "$launch_config" ${NPROC:+--num_processes "$NPROC"} -m)
fi
# pipefail: the trainer's exit status, not tee's, is this script's status.
"${TRAIN[@]}" script.train.train_probe_and_focus --model "$MODEL" ${args[@]+"${args[@]}"} 2>&1 | tee -a "$LOG_FILE"
