#!/usr/bin/env bash
# Rust against the installed prefix: cargo test of bindings/rust (mptrain-sys finds the
# library with pkg-config; no crate from outside, offline), then the Rust example.
# Usage: rust.sh WORK SOURCE_DIR
work=$1
src=$2
source "$src/tests/packaging/lib.bash"
need cargo cargo
need rustc rustc
# Everything cargo writes stays under WORK; Cargo.lock files are part of the sources.
export CARGO_HOME=$work/cargo-home CARGO_TARGET_DIR=$work/cargo-target CARGO_NET_OFFLINE=true
cargo=(cargo --quiet)

"${cargo[@]}" test --offline --locked --manifest-path "$src/bindings/rust/Cargo.toml" --workspace \
  >"$work/cargo-test.log" 2>&1 || fail "cargo test of bindings/rust: $(tail -40 "$work/cargo-test.log")"
grep -E "^test result: ok\. [0-9]+ passed" "$work/cargo-test.log" >/dev/null || fail "no passing tests: $(cat "$work/cargo-test.log")"

"${cargo[@]}" build --offline --locked --manifest-path "$src/examples/rust/Cargo.toml" >"$work/cargo-example.log" 2>&1 ||
  fail "cargo build of examples/rust: $(tail -40 "$work/cargo-example.log")"
uses_installed_library "$CARGO_TARGET_DIR/debug/train_rust"
check_example rust "$CARGO_TARGET_DIR/debug/train_rust"
echo "rust.sh: ok ($(grep -E '^test result' "$work/cargo-test.log" | awk '{n += $4} END {print n}') tests, $(rustc --version))"
