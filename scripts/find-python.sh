#!/usr/bin/env bash
# Prints the newest supported Python (3.13, 3.12, 3.11) that runs from PATH, or nothing.
# `find-python.sh 3.11` looks for that version only. It prints the interpreter itself (sys.executable). Each candidate is run, not just looked up: a
# pyenv shim for a version that is installed but not selected exists on PATH and fails when run.
set -uo pipefail
versions=${1:-"3.13 3.12 3.11"}
for version in $versions; do
    for candidate in "python$version" python3; do
        if "$candidate" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$version' else 1)" 2>/dev/null; then
            "$candidate" -c "import sys; print(sys.executable)"  # the real interpreter, not a shim
            exit 0
        fi
    done
done
exit 0
