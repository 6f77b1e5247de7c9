#!/usr/bin/env bash
# Create the venv and install the pinned requirements; `make setup` runs this when they change.
#
#   script/setup_venv.sh PYTHON VENV EXCLUDE_REGEX      # EXCLUDE_REGEX: what compileall leaves out
#   INSTALLER=pip script/setup_venv.sh ...              # pip alone
#
# The installer is uv, which pip first puts into the venv: pip resolves, downloads and unpacks one
# wheel at a time (about 32 s for these requirements on 2 cores), uv does it in parallel (about
# 14 s, and 2 s to install uv). Where uv cannot be installed or its install fails, pip does the
# install, so the venv is the same either way. uv reads none of pip's configuration, so the index,
# extra indexes and wheel folders pip is configured with are handed to it, and both installers see
# the same candidates (uv's unsafe-best-match is pip's rule: the best version on any index).
set -euo pipefail

PYTHON_BOOT="$1"
VENV="$2"
EXCLUDE="$3"
INSTALLER="${INSTALLER:-uv}"
case "$INSTALLER" in
    uv | pip) ;;
    *) echo "setup: INSTALLER=$INSTALLER: expected uv or pip" >&2; exit 2 ;;
esac
UV_VERSION=0.13.10
PY="$VENV/bin/python"
REQUIREMENTS=(-r requirements.txt -r requirements-test.txt)

"$PYTHON_BOOT" -m venv "$VENV"

# One of pip's settings from PIP_CONFIG (environment first, then its config files), or nothing.
pip_setting() {
    sed -n "s/^[^=]*\.$1='\(.*\)'\$/\1/p" <<< "$PIP_CONFIG" | head -n 1
}

install_with_uv() {
    "$PY" -m pip install --quiet "uv==$UV_VERSION" || return 1
    local PIP_CONFIG
    PIP_CONFIG="$("$PY" -m pip config list 2>/dev/null || true)"
    local args=(--python "$PY" --quiet --index-strategy unsafe-best-match) value
    value="$(pip_setting index-url)"
    [ -z "$value" ] || args+=(--index-url "$value")
    for value in $(pip_setting extra-index-url); do args+=(--extra-index-url "$value"); done
    for value in $(pip_setting find-links); do args+=(--find-links "$value"); done
    # The cache would keep an unpacked copy of every wheel (torch alone is over 1 GB) for an install
    # that runs only when the requirements change.
    UV_NO_CACHE=1 "$VENV/bin/uv" pip install "${args[@]}" "${REQUIREMENTS[@]}"
}

if [ "$INSTALLER" != uv ] || ! install_with_uv; then
    [ "$INSTALLER" != uv ] || echo "setup: uv could not install the requirements; pip installs them" >&2
    "$PY" -m pip install --quiet --no-compile "${REQUIREMENTS[@]}"
fi
"$PY" -m pip install --quiet --no-deps --no-compile -e .

# Byte-compile on every core (pip and uv would not, or on one): with PYTHONDONTWRITEBYTECODE set
# nothing else writes the .pyc files, and torch, transformers, peft and trl then import in 17 s
# instead of 8 s in every process. Files written for newer Pythons do not compile; that is expected.
"$PY" -m compileall -q -j 0 -x "$EXCLUDE" "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    > /dev/null 2>&1 || true
