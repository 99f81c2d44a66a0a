#!/usr/bin/env bash
# Cross-compiles the kernel crate for aarch64 and runs its tests under qemu, on a
# modern core (-cpu max: the neon, dotprod and i8mm tables) and on one without
# dotprod (cortex-a53: the plain neon table alone),
# so every NEON path and its fallback runs for real; then the core crate's
# model-level checks of those paths (isa_paths, decode_allocations). Debian bookworm packages only.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${EDGELLM_ARM_TOOLS:-/opt/edgellm-arm}

if [ ! -x "$TOOLS/root/usr/bin/rustc" ] || ! command -v qemu-aarch64-static >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    dpkg --add-architecture arm64
    apt-get update -qq
    apt-get install -y -qq qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross libllvm22 >/dev/null
    mkdir -p "$TOOLS" && cd "$TOOLS"
    apt-get download -qq rustc-web libstd-rust-web-1.96 libstd-rust-web-dev \
        libstd-rust-web-1.96:arm64 libstd-rust-web-dev:arm64 2>/dev/null
    for f in *.deb; do dpkg -x "$f" root; done
    cd - >/dev/null
fi

export LD_LIBRARY_PATH="$TOOLS/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUSTC="$TOOLS/root/usr/bin/rustc"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
for cpu in max cortex-a53; do
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -cpu $cpu -L /usr/aarch64-linux-gnu"
    echo "== aarch64 kernel tests under qemu -cpu $cpu =="
    cargo test -p edgellm-kernels --tests --target aarch64-unknown-linux-gnu --target-dir target/aarch64
    # The engine on those tables: every fixture architecture (and the default
    # model as q4_K/q5_K/q6_K) as the scalar path computes it, and decode steps
    # that allocate nothing. Optimised: quantizing at load under emulation is
    # several times slower unoptimised, and the kernels ran with checks above.
    echo "== aarch64 model tests under qemu -cpu $cpu =="
    cargo test --release -p edgellm-core --test isa_paths --target aarch64-unknown-linux-gnu --target-dir target/aarch64
    EDGELLM_ALLOC_SIMD_ONLY=1 cargo test --release -p edgellm-core --test decode_allocations \
        --target aarch64-unknown-linux-gnu --target-dir target/aarch64
done

# As tests/test_kernel_intrinsics.py for the x86 extension: a NEON intrinsic
# compiled as a call (inside a closure, which does not inherit a kernel's
# target features) costs a call per instruction and changes no result.
echo "== aarch64 release build: every NEON intrinsic inlined =="
bins=$(find target/aarch64/aarch64-unknown-linux-gnu/release/deps -maxdepth 1 -type f -name 'isa_paths-*' ! -name '*.d')
# (nm's output is kept: `nm | grep -q` fails under pipefail when grep stops
# reading early.)
syms=$(aarch64-linux-gnu-nm --defined-only $bins)
grep -q edgellm_kernels <<< "$syms" || { echo "no kernel symbols in $bins" >&2; exit 1; }
calls=$(awk '$2 ~ /^[tT]$/ && $3 ~ /core_arch/ && $3 ~ /neon/ && $3 !~ /fmt/ {print $3}' <<< "$syms" | sort -u)
if [ -n "$calls" ]; then
    echo "intrinsics left as calls:" >&2
    echo "$calls" >&2
    exit 1
fi
echo "none left as calls"
