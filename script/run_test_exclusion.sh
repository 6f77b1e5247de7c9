#!/usr/bin/env bash
# The guide's one command: extract every KorMedMCQA evaluation set, then remove them all from the
# training data.
#
#   bash script/run_test_exclusion.sh                                # data/raw -> data/kormedmcqa_test,
#                                                                    # data/refined -> data/refined_clean
#   bash script/run_test_exclusion.sh --from-dir data/sample         # read KorMedMCQA from the hub mirror
#   bash script/run_test_exclusion.sh --source data/division_added --output data/division_added_clean
#   PYTHON=.venv/bin/python bash script/run_test_exclusion.sh
#
# Options go to the step that knows them:
#   extract: --raw-dir DIR | --from-dir DIR, --test-dir DIR (its --output-dir), --steer-fraction F,
#            --set NAME (what all_test.jsonl holds; default guide604), --allow-rejects
#   exclude: --source DIR, --output DIR, --threshold T, --min-near-chars N, --force
# The exclusion always uses every set file the extraction wrote (all_test, guide604, official_test, steer).
set -euo pipefail

PYTHON="${PYTHON:-python}"
# Make `-m script.…` work from any folder without moving the user's relative paths.
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"

extract_args=()
exclude_args=()
test_dir=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --raw-dir|--from-dir|--steer-fraction|--set)
            extract_args+=("$1" "$2"); shift 2 ;;
        --allow-rejects)
            extract_args+=("$1"); shift ;;
        --test-dir)
            test_dir="$2"; shift 2 ;;
        --source|--output|--threshold|--min-near-chars)
            exclude_args+=("$1" "$2"); shift 2 ;;
        --force)
            exclude_args+=("$1"); shift ;;
        -h|--help)
            sed -n '2,15p' "$0"; exit 0 ;;
        *)
            echo "run_test_exclusion.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -z "$test_dir" ]]; then
    test_dir="$("$PYTHON" -c 'from script.training_config import KORMEDMCQA_TEST_DIR; print(KORMEDMCQA_TEST_DIR)')"
fi

echo "== 1/2 extract KorMedMCQA evaluation sets -> $test_dir"
"$PYTHON" -m script.extract_kormedmcqa_test --output-dir "$test_dir" ${extract_args[@]+"${extract_args[@]}"}

echo "== 2/2 remove them from the training data"
"$PYTHON" -m script.exclude_test_from_training --test "$test_dir"/*.jsonl ${exclude_args[@]+"${exclude_args[@]}"}
