#!/usr/bin/env bash
# Every test, as CI runs them: the page helpers under node, then pytest from unit tests to a real
# JupyterLab / Notebook 7 in headless Chromium. Sets up what it needs on a fresh machine:
# a .venv with the package and its test extras, and Debian's chromium (Playwright's own browser
# download does not work offline). Extra arguments go to pytest (e.g. `-k ledger`, `-m "not browser"`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TIMEBACK_TEST_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
cd "$root"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x /usr/lib/chromium/chromium ] && ! command -v chromium >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the browser tests"
  apt_install chromium
fi
if ! command -v node >/dev/null 2>&1; then
  echo "Installing node for the widget's JS tests"
  apt_install nodejs
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "Installing npm for JupyterHub's proxy"
  apt_install npm
fi
# The relay's hub tests run a real JupyterHub, whose proxy is the npm package
# configurable-http-proxy: installed into the checkout (gitignored), never globally.
if [ ! -x "$root/node_modules/.bin/configurable-http-proxy" ]; then
  echo "Installing configurable-http-proxy into $root/node_modules"
  npm install --prefix "$root" --no-save --no-audit --no-fund --loglevel=error configurable-http-proxy >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
if ! "$venv/bin/python" -c 'import timeback_nb, jupyterlab, notebook, playwright, hypothesis, jsonschema, jupyterhub' >/dev/null 2>&1 \
   || [ pyproject.toml -nt "$venv/.timeback-test-deps" ]; then
  echo "Installing timeback-nb with its test extras into $venv"
  "$venv/bin/python" -m pip install --quiet -e ".[test]"
  touch "$venv/.timeback-test-deps"
fi

echo "== node --test js/test"
node --test js/test/
echo "== pytest"
exec "$venv/bin/python" -m pytest "$@"
