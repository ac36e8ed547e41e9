#!/usr/bin/env bash
# The fuzzers of fuzz/ (cargo-fuzz, libFuzzer, AddressSanitizer); see fuzz/README.md.
#
#   scripts/fuzz.sh smoke [SECONDS]          build every target, run each SECONDS (default 30)
#                                            from its seeds; fails when a target finds a crash
#   scripts/fuzz.sh run TARGET [SECONDS] [-- LIBFUZZER-ARGS]
#                                            a campaign: one target, SECONDS (default 600)
#   scripts/fuzz.sh seeds                    (re)write the seed corpora into fuzz/corpus/
#
# Targets: front_end, differential, module_loader. Inputs that crash a target land in
# fuzz/artifacts/TARGET/; copy each into fuzz/regressions/TARGET/ so that the normal test
# suite (tests/all/fuzz.rs) replays it.
#
# cargo-fuzz needs unstable compiler flags (-Zsanitizer=address, coverage passes): on a stable
# toolchain they are allowed with RUSTC_BOOTSTRAP=1, set here.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(front_end differential module_loader)
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "fuzz: installing cargo-fuzz from crates.io" >&2
        cargo install cargo-fuzz --locked
    fi
}

# Per-target libFuzzer options: input size, and a per-input time limit (a slower input is a
# finding: a stage that does not stop). Leak detection is off: the targets build a module or
# start LLVM once per process and keep it, which libFuzzer would report as a leak.
options() {
    local max_len
    case "$1" in
    front_end) max_len=4096 ;;
    differential) max_len=256 ;;
    module_loader) max_len=1024 ;;
    esac
    # The generator's inputs are choices: a short input is a trivial kernel, so libFuzzer must
    # not start from short inputs (-len_control=0) where an execution costs an LLVM compile.
    local extra=""
    [ "$1" = differential ] && extra="-len_control=0"
    echo "-max_len=$max_len -timeout=60 -rss_limit_mb=4096 -detect_leaks=0 -print_final_stats=1 $extra"
}

# The front end's seeds: every .kf file of tests/kf and examples/kf, and every fenced block of
# lang-spec (the same ones tests/all/fuzz.rs replays).
seeds() {
    local out=fuzz/corpus/front_end
    mkdir -p "$out" fuzz/corpus/differential fuzz/corpus/module_loader
    for f in tests/kf/*/*.kf examples/kf/*.kf; do
        cp "$f" "$out/seed-$(echo "$f" | tr '/' '-')"
    done
    for f in lang-spec/*.md; do
        awk -v out="$out/seed-$(basename "$f" .md)" '
            /^[[:space:]]*```/ {
                if (inside) { close(file); inside = 0 } else { n++; file = sprintf("%s-%03d.kf", out, n); printf "" > file; inside = 1 }
                next
            }
            inside { print > file }
        ' "$f"
    done
    # Findings seed their targets too.
    for t in "${TARGETS[@]}"; do
        if [ -d "fuzz/regressions/$t" ]; then
            find "fuzz/regressions/$t" -type f ! -name README.md -exec cp {} "fuzz/corpus/$t/" \;
        fi
    done
}

# FUZZ_SANITIZER=none builds and runs without AddressSanitizer (in fuzz/target-nosan, beside
# the ASan build): several times the executions per second, for long campaigns of targets whose
# code is safe Rust but for the calls into compiled kernels. The default is address.
sanitizer_args() {
    if [ "${FUZZ_SANITIZER:-address}" = none ]; then
        echo "-s none --target-dir $PWD/fuzz/target-nosan"
    fi
}

run_target() {
    local target="$1" seconds="$2"
    shift 2
    # shellcheck disable=SC2046
    cargo fuzz run $(sanitizer_args) "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" $(options "$target") "$@"
}

case "${1:-}" in
smoke)
    seconds="${2:-30}"
    ensure_cargo_fuzz
    seeds
    # shellcheck disable=SC2046
    cargo fuzz build $(sanitizer_args)
    for t in "${TARGETS[@]}"; do
        echo "fuzz: $t for ${seconds}s" >&2
        log="fuzz/artifacts/$t.smoke.log"
        mkdir -p fuzz/artifacts
        status=0
        run_target "$t" "$seconds" >"$log" 2>&1 || status=$?
        grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|SUMMARY)' "$log" >&2 || true
        if [ "$status" -ne 0 ]; then
            tail -40 "$log" >&2
            echo "fuzz: $t found a crash (exit $status); the input is in fuzz/artifacts/$t/" >&2
            exit 1
        fi
    done
    ;;
run)
    target="${2:?usage: scripts/fuzz.sh run TARGET [SECONDS] [-- ARGS]}"
    seconds="${3:-600}"
    shift $(($# < 3 ? $# : 3))
    [ "${1:-}" = "--" ] && shift
    ensure_cargo_fuzz
    seeds
    run_target "$target" "$seconds" "$@"
    ;;
seeds)
    seeds
    ;;
*)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
