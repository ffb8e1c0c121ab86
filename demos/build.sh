#!/usr/bin/env bash
# Builds every demo: modules for wasm32-wasip1, the components for wasm32-wasip2.
# Outputs: demos/target/wasm32-wasip1/release/*.wasm, demos/target/wasm32-wasip2/release/*.wasm
set -euo pipefail
cd "$(dirname "$0")"
cargo build --quiet --release --target wasm32-wasip1 -p wasi-example -p exit-error -p ticker -p misbehave
cargo build --quiet --release --target wasm32-wasip2 -p hello-component -p http-client -p config-reader -p http-hello -p tcp-listener -p thermostat
