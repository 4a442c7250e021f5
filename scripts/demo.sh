#!/usr/bin/env bash
# The demo in one command: JupyterLab on the demo notebook in local mode (events stay on this
# machine, no account needed). Needs only Python >= 3.10; everything else goes into .venv.
#
#   scripts/demo.sh                       # opens the browser
#   scripts/demo.sh --no-browser --port 8890
#
# Arguments are passed to `timeback-nb demo`. PYTHON picks the interpreter that creates .venv,
# TIMEBACK_DEMO_VENV another virtualenv. The events go to a store inside the demo folder
# (timeback-demo/.timeback/store.sqlite; one `rm -rf timeback-demo` removes the whole demo)
# unless TIMEBACK_NB_STORE names another SQLite file.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TIMEBACK_DEMO_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

fail() { echo "demo.sh: $*" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  command -v "$python" >/dev/null 2>&1 || fail "needs Python 3.10 or newer as '$python' (set PYTHON=/path/to/python3)"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || fail "needs Python 3.10 or newer; '$python' is $("$python" --version 2>&1)"
  echo "Creating $venv"
  "$python" -m venv "$venv" || fail "could not create $venv (on Debian/Ubuntu: apt install python3-venv)"
  # An old bundled pip cannot do editable installs of a pyproject-only package.
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

# Install only when something is missing, so later runs start at once and work offline.
if ! "$venv/bin/python" -c 'import timeback_nb.cli, jupyterlab, ipykernel' >/dev/null 2>&1; then
  echo "Installing timeback-nb with its demo extras into $venv"
  "$venv/bin/python" -m pip install --quiet -e "$root[demo]"
fi

cd "$root"
export TIMEBACK_NB_TRANSPORT=local
exec "$venv/bin/timeback-nb" demo "$@"
