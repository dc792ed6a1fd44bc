#!/usr/bin/env bash
# The hybrid (InceptionV3 + Xception) at 224 px with the JAX backend, then as many architectures as fit
# in the time limit (`smearflow benchmark --preset gpu-10min`). TensorFlow is neither needed nor installed.
# docs/benchmark.md, "The hybrid at 224 px on a GPU host with JAX and no TensorFlow", explains the options.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/gpu-benchmark.sh [--wheels DIR | --no-install] [--site DIR] [--weights DIR] [--out DIR]
                                [--time-limit S] PBC_DIR [BENCHMARK_OPTION...]
       scripts/gpu-benchmark.sh --download-wheels DIR [--python-version X.Y]

Installs what smearflow's dependencies (less TensorFlow) lack beside the host's own packages into --site
(from the package index, or offline from --wheels DIR), checks that JAX sees a GPU (SMEARFLOW_ALLOW_CPU=1
allows a CPU dry run), then runs `smearflow benchmark --preset gpu-10min` on PBC_DIR; options after
PBC_DIR are passed to it. The whole script stops within --time-limit seconds [570].
--download-wheels fetches every wheel that list needs for a Linux x86_64 host [Python 3.12], for --wheels.
The interpreter is $PYTHON [python3].
EOF
}

die() {
    echo "gpu-benchmark.sh: $*" >&2
    exit 2
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
install=index
wheels=
site=${TMPDIR:-/tmp}/smearflow-gpu-site
weights=
run_dir=runs/gpu-224px-$(date -u +%Y%m%d)
time_limit=570
download=
python_version=3.12

requirements() {
    # smearflow's dependencies less TensorFlow, read from pyproject.toml so the list is never copied.
    "$py" - "$repo/pyproject.toml" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as file:
    dependencies = tomllib.load(file)["project"]["dependencies"]
print("\n".join(d for d in dependencies if not d.startswith("tensorflow")))
PY
}

download_wheels() {
    local requirements_file=$1 folder=$2
    mkdir -p "$folder"
    "$py" -m pip download --quiet --only-binary=:all: --python-version "$python_version" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$folder" -r "$requirements_file"
    echo "$(ls "$folder" | wc -l) wheels in $folder for Python $python_version"
}

missing_pins() {
    # pip's resolver, run against what the interpreter already has (the host's JAX, NumPy, SciPy ...),
    # names the distributions that are absent or too old: only those are installed.
    local requirements_file=$1
    shift
    "$py" -m pip install --dry-run --quiet --report - "$@" -r "$requirements_file" \
        | "$py" -c 'import json, sys
for item in json.load(sys.stdin)["install"]:
    print(item["metadata"]["name"] + "==" + item["metadata"]["version"])'
}

install_missing() {
    local requirements_file index_args=()
    requirements_file=$(mktemp)
    requirements >"$requirements_file"
    if [ "$install" = wheels ]; then
        index_args=(--no-index --find-links "$wheels")
    elif ! "$py" -c 'import jax' 2>/dev/null; then
        echo 'jax[cuda12]' >>"$requirements_file"
    fi
    local pins
    pins=$(missing_pins "$requirements_file" "${index_args[@]}")
    rm -f "$requirements_file"
    if [ -z "$pins" ]; then
        echo "smearflow's dependencies are all installed"
        return
    fi
    echo "installing into $site:" $pins
    # shellcheck disable=SC2086  # one pin per word
    "$py" -m pip install --quiet --no-deps --upgrade --target "$site" "${index_args[@]}" $pins
}

check_jax() {
    "$py" - <<'PY'
import os
import sys

import jax
import keras

import smearflow.commands.training  # noqa: F401  (smearflow and the benchmark's imports resolve)

devices = jax.devices()
print(f"keras {keras.__version__} ({keras.backend.backend()}), jax {jax.__version__}:",
      ", ".join(f"{d.platform} {d.device_kind}" for d in devices))
if keras.backend.backend() != "jax":
    sys.exit(f"Keras runs on {keras.backend.backend()!r}, not jax: is KERAS_BACKEND overridden?")
if devices[0].platform != "gpu" and os.environ.get("SMEARFLOW_ALLOW_CPU") != "1":
    sys.exit("JAX sees no GPU (install JAX with CUDA); SMEARFLOW_ALLOW_CPU=1 allows a dry run on the CPU")
PY
}

run_benchmark() {
    local data=$1 remaining=$((time_limit - SECONDS)) weight_args=()
    shift
    if [ "$remaining" -lt 60 ]; then
        die "only ${remaining} s of --time-limit ${time_limit} left after installing: no time to benchmark"
    fi
    if [ -n "$weights" ]; then
        weight_args=(--weights "imagenet=$weights" --freeze-backbone-epochs 1)
    fi
    local rc=0
    timeout --kill-after=20 "$remaining" "$py" -m smearflow benchmark --data "$data" --preset gpu-10min \
        --out "$run_dir" "${weight_args[@]}" "$@" || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "stopped at the time limit: the architectures that finished are in $run_dir"
        [ -f "$run_dir/results.json" ] || exit "$rc"
    elif [ "$rc" -ne 0 ]; then
        exit "$rc"
    fi
    echo "report: $run_dir/report.md"
}

while [ $# -gt 0 ]; do
    case $1 in
        --wheels) install=wheels wheels=${2:?--wheels needs a folder}; shift 2 ;;
        --no-install) install=none; shift ;;
        --site) site=${2:?--site needs a folder}; shift 2 ;;
        --weights) weights=${2:?--weights needs a folder}; shift 2 ;;
        --out) run_dir=${2:?--out needs a folder}; shift 2 ;;
        --time-limit) time_limit=${2:?--time-limit needs seconds}; shift 2 ;;
        --download-wheels) download=${2:?--download-wheels needs a folder}; shift 2 ;;
        --python-version) python_version=${2:?--python-version needs X.Y}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (--help for usage)" ;;
        *) break ;;
    esac
done

if [ -n "$download" ]; then
    requirements_file=$(mktemp)
    requirements >"$requirements_file"
    download_wheels "$requirements_file" "$download"
    rm -f "$requirements_file"
    exit 0
fi
[ $# -ge 1 ] || die "PBC_DIR is missing (--help for usage)"
data=$1
shift
[ -d "$data" ] || die "PBC_DIR is not a folder. Received: $data"
[ "$install" != wheels ] || [ -d "$wheels" ] || die "--wheels is not a folder. Received: $wheels"
[[ $time_limit =~ ^[0-9]+$ ]] || die "--time-limit must be whole seconds. Received: $time_limit"

export KERAS_BACKEND=jax
export PYTHONPATH="$repo/src:$site${PYTHONPATH:+:$PYTHONPATH}"
if [ "$install" != none ]; then
    install_missing
fi
check_jax
run_benchmark "$data" "$@"
