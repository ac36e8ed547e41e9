#!/usr/bin/env bash
# Installs what keops-rs needs on a Debian 12 machine, skipping what is already there:
# the Rust toolchain's components (rustfmt, clippy), LLVM 19 (for code generation), and the
# Python virtual environment .venv/ that the Python package is built and tested in.
set -euo pipefail

need_apt=()
[ -x /usr/lib/llvm-19/bin/llvm-config ] || need_apt+=(llvm-19-dev)
[ -e /usr/lib/llvm-19/lib/libPolly.a ] || need_apt+=(libpolly-19-dev)
[ -e /usr/include/zstd.h ] || need_apt+=(libzstd-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust with rustup first" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component" >/dev/null 2>&1 || echo "setup: could not add $component" >&2
    fi
done

# .venv/ with numpy, pytest and maturin (made once; `./x test` builds the package into it).
"$(dirname "$0")/python.sh" venv
