#!/usr/bin/env bash
# The real GPIO and I2C backends against the kernel's own simulators: gpio-sim (a GPIO chip
# whose lines a test pulls and reads through configfs and sysfs) and i2c-stub (an SMBus
# adapter that acts as a register file at 0x48). They need root and those modules; where
# the kernel lacks them, each test is reported as skipped with the reason, never as passed.
set -euo pipefail
cd "$(dirname "$0")/../.."

tests=()
skip() { echo "skipped: $1"; }

if [ "$(id -u)" != 0 ]; then
    skip "kernel GPIO and I2C backend tests: they need root"
    exit 0
fi

configfs=/sys/kernel/config
if [ ! -d "$configfs/gpio-sim" ]; then
    modprobe gpio-sim 2>/dev/null || true
    if [ -d "$configfs" ] && ! mountpoint -q "$configfs"; then
        mount -t configfs none "$configfs" 2>/dev/null || true
    fi
fi
if [ -d "$configfs/gpio-sim" ]; then
    tests+=("test(kernel_lines_are_driven_and_followed_through_the_character_device)")
else
    skip "GPIO character device backend on gpio-sim: this kernel has no gpio-sim module ($configfs/gpio-sim is missing; needs CONFIG_GPIO_SIM)"
fi

if [ ! -d /sys/module/i2c_stub ]; then
    modprobe i2c-dev 2>/dev/null || true
    modprobe i2c-stub chip_addr=0x48 2>/dev/null || true
fi
# Exactly one chip, at 0x48 (72): the test expects nobody at 0x49.
if [ -d /sys/module/i2c_stub ] && grep -qx '72\(,0\)*' /sys/module/i2c_stub/parameters/chip_addr 2>/dev/null \
    && [ -d /sys/class/i2c-dev ]; then
    tests+=("test(kernel_bus_carries_register_writes_and_reads_and_reports_no_acknowledge)")
elif [ -d /sys/module/i2c_stub ]; then
    skip "i2c-dev backend on i2c-stub: i2c-stub is loaded with chips other than one at 0x48, or i2c-dev is missing"
else
    skip "i2c-dev backend on i2c-stub: this kernel has no i2c-stub module (needs CONFIG_I2C_STUB and CONFIG_I2C_CHARDEV)"
fi

if [ ${#tests[@]} -eq 0 ]; then
    exit 0
fi
if cargo nextest --version >/dev/null 2>&1; then
    filter=$(IFS='|'; echo "${tests[*]}")
    cargo nextest run -p peripherals-provider --locked --run-ignored ignored-only -E "$filter"
else
    for test in "${tests[@]}"; do
        name=${test#test(}
        cargo test -p peripherals-provider --locked -- --ignored "${name%)}"
    done
fi
