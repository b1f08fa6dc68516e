#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (its image has torch, timm, peft, opencv, scipy, matplotlib, tensorboard,
# rich, pyyaml, safetensors, cloudpickle; Python 3.12; no network there). Run here, then name `.whl` in the
# device call's `carry` and start its command with benchmarks/gpu.sh (which installs them into /tmp/site).
# albumentations (classification data only) is left out: with polars the carry would pass the 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl \
    ultralytics==8.4.190 ultralytics-thop==2.2.3 polars==2.1.0 polars-runtime-32==2.1.0 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
du -sh .whl
