#!/usr/bin/env bash
# Build/download into .whl/ (git-ignored) every package the GPU scripts need that the GPU image lacks (it has torch
# 2.11+cu130, transformers, tensorboard, ... but no deepspeed/papermill/jupyter/nbdev/mamba_ssm): experiments/run_2gpu.sh,
# experiments/gpu_batch.sh (including its `gputests` mode, which runs the notebooks' `#| gpu` cells with nbdev_test).
# Versions = the ones this repo's CPU venv runs with; cp312 manylinux wheels for the few compiled ones.
# List derived from the installed metadata of papermill, ipykernel and deepspeed minus the GPU image's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
PKGS="annotated-types==0.8.0 asttokens==3.0.2 comm==0.2.3 debugpy==1.8.22 entrypoints==0.4.2 executing==2.3.0
fastjsonschema==2.22.3 hjson==3.1.0 ipykernel==7.4.0 ipython==9.18.1 ipython-pygments-lexers==1.1.1 jedi==0.20.1
jsonschema==4.26.0 jsonschema-specifications==2025.9.1 jupyter-client==8.10.0 jupyter-core==5.9.1
matplotlib-inline==0.2.2 nbclient==0.11.0 nbformat==5.11.1 nest-asyncio2==1.7.4 papermill==2.7.0 parso==0.8.7
pexpect==4.9.0 platformdirs==4.14.8 prompt-toolkit==3.0.53 ptyprocess==0.7.0 pure-eval==0.2.4 pydantic==2.14.4
pydantic-core==2.50.5 pyzmq==27.3.0 referencing==0.37.0 rpds-py==2026.9.1 stack-data==0.6.3 tenacity==9.2.1
tornado==6.6.1 traitlets==5.16.1 typing-inspection==0.4.5 wcwidth==0.9.4 msgpack==1.2.4 py-cpuinfo==9.0.0
ninja==1.13.2"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d .whl $PKGS
# nbdev 2.4 and what it needs beyond the list above (pure-python or cp312 wheels)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    nbdev==2.4.14 execnb==0.1.18 fastcore==1.14.5 ghapi==1.0.16 fastgit==0.0.6 astunparse==1.6.3 watchdog==7.1.0 six==1.17.0
# mamba_ssm: its Triton kernels only (no CUDA extension is compiled; the project registers the missing Mamba-1 module)
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $PY -m pip wheel -q --no-deps --no-build-isolation -w .whl mamba-ssm==2.3.2.post1
# deepspeed ships only an sdist: build a pure-python wheel (ops JIT-compile on first use; we need none of them)
DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8
ls .whl | wc -l; du -sh .whl
