#!/usr/bin/env bash
# Regenerates the lock files that the roles' wheelhouse is built from:
#   requirements/collector.lock  the base package's runtime dependencies
#   requirements/widget.lock     the same plus the `widget` extra
# One universal resolution for every Python >= 3.9 on any platform (markers where a version
# differs per Python), each pin with the sha256 of every file the index has for that version.
# The project itself is not in the lock.
#
# Usage: scripts/lock.sh                        (make lock) keep the current pins where they
#                                               still fit pyproject.toml, resolve the rest
#        scripts/lock.sh --upgrade              move every pin to the newest release that fits
#        scripts/lock.sh --upgrade-package NAME  move one
# Any argument is passed on to `uv pip compile`. Another index: UV_DEFAULT_INDEX=URL.
# The output is sorted by name, with relative paths and no timestamp: the same pins give
# the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."

uv=${UV:-}
if [ -z "$uv" ]; then
    if [ -x .venv/bin/uv ]; then uv=.venv/bin/uv; else uv=$(command -v uv || true); fi
fi
if [ -z "$uv" ]; then
    echo "uv not found: run 'make venv' (the dev extra installs it) or set UV=/path/to/uv" >&2
    exit 1
fi

# The oldest Python the targets run (pyproject's requires-python); newer ones are covered by
# the universal resolution.
min_python=3.9

tmp=
trap 'rm -f "$tmp"' EXIT

lock() {
    local out=$1 what=$2
    shift 2
    tmp=$(mktemp "$out.XXXXXX")
    # uv reads the pins it keeps from -o, so the current lock is its starting point.
    [ -f "$out" ] && cp "$out" "$tmp"
    "$uv" pip compile pyproject.toml "$@" \
        --universal --python-version "$min_python" --generate-hashes \
        --no-config --no-header --quiet -o "$tmp"
    {
        echo "# $what."
        echo "# Pinned for Python >= $min_python on every platform (one universal resolution, markers"
        echo "# where a version differs per Python), with the sha256 of every file of each release."
        echo "# Do not edit: regenerate with 'make lock' (scripts/lock.sh: uv pip compile --universal)."
        cat "$tmp"
    } >"$out"
    rm -f "$tmp"
}

mkdir -p requirements
lock requirements/collector.lock "Runtime dependencies of the mor-regstatus collector (the base package)" "$@"
lock requirements/widget.lock "Runtime dependencies of the mor-regstatus widget (the base package and the widget extra)" --extra widget "$@"
