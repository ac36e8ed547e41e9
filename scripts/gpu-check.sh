#!/usr/bin/env bash
# The GPU check, in two halves because the GPU machine has no LLVM, no network and no Rust:
#   scripts/gpu-check.sh prepare   (here) build keopsc, then modules with their GPU code (PTX)
#                                  into target/gpu-check/: the benchmark workloads W1-W5
#                                  (examples/kf/gpu-bench.kf) and one module per kernel file of
#                                  tests/kf/run/ (every reduction kind, both axes); and the
#                                  runtime-only program gpu-check (feature cuda), beside them
#   scripts/gpu-check.sh run [--require-gpu] [gpu-check options]
#                                  (there, or here) every module's GPU code against its CPU
#                                  code, then W1-W5 timed at N = M = 1e5 and 1e6, f32 and f64;
#                                  without a GPU it says SKIPPED and exits 0 (1 with
#                                  --require-gpu)
#   scripts/gpu-check.sh           both
# On a machine lent by the device tool: prepare here, then run there with
#   command "scripts/gpu-check.sh run --require-gpu", carry ["target/gpu-check"]
# (about 20 MB; the CPU code is built for x86-64-v3 so that the GPU machine's cores run it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/gpu-check

prepare() {
    cargo build --release -p keopsc
    cargo build --release -p keops-examples --features cuda --bin gpu-check
    rm -rf "$out"
    mkdir -p "$out/tests"
    local keopsc=target/release/keopsc
    "$keopsc" build examples/kf/gpu-bench.kf --gpu --target x86-64-v3 -o "$out/gpu-bench.kmod"
    for kf in tests/kf/run/*.kf; do
        name=$(basename "$kf" .kf)
        "$keopsc" build "$kf" --gpu --target x86-64-v3 -o "$out/tests/$name.kmod" >/dev/null
    done
    cp target/release/gpu-check "$out/gpu-check"
    echo "gpu-check: prepared $(ls "$out/tests" | wc -l) test modules and the benchmark in $out ($(du -sh "$out" | cut -f1))"
}

run() {
    if [ ! -x "$out/gpu-check" ]; then
        echo "gpu-check: $out/gpu-check is missing: run scripts/gpu-check.sh prepare first" >&2
        exit 1
    fi
    "$out/gpu-check" "$out"/tests/*.kmod --bench "$out/gpu-bench.kmod" --sizes 100000 1000000 "$@"
}

case "${1:-}" in
prepare) prepare ;;
run)
    shift
    run "$@"
    ;;
"")
    prepare
    run
    ;;
*)
    echo "usage: scripts/gpu-check.sh [prepare | run [--require-gpu] [gpu-check options]]" >&2
    exit 2
    ;;
esac
