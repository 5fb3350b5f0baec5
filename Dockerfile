# breedserve's AWS Lambda container image: ONNX Runtime and CPU-only torch, handler/ and
# model_store/, nothing else. The int8 and fp32-graph variants run on ONNX Runtime and never
# import torch; torch serves the fp32 variant only.
#
# Build (one architecture per image, as Lambda requires):
#   docker buildx build --platform linux/amd64 --provenance=false -t breedserve:x86_64 --load .
#   docker buildx build --platform linux/arm64 --provenance=false -t breedserve:arm64 --load .
# or `make image` (docker when a daemon answers, else podman). docs/image.md has the details.
#
# Layers, largest and least often changed first, so a code change rebuilds and pushes kilobytes:
#   torch (/opt/torch) | ONNX Runtime and the other pinned dependencies (/opt/venv) | handler/ + model_store/ (/var/task)
# Every .py that serving imports is compiled at build time (unchecked-hash pycs): the root
# filesystem is read-only at run time and Lambda only lets a function write under /tmp.
# Needs BuildKit (docker 23+ default) or podman/buildah, for RUN --mount.

ARG BASE_IMAGE=public.ecr.aws/docker/library/python:3.12-slim-bookworm

# A virtualenv with pip, shared by the build stages. Nothing from it but /opt/venv reaches the image.
FROM ${BASE_IMAGE} AS python-base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv

# torch alone, from the PyTorch index only (--isolated: no pip configuration can add PyPI, whose
# x86_64 torch is the CUDA build). TORCH_VERSION may carry a local label, e.g. 2.14.1+cpu.
# Dropped from the wheel: C++ headers, C++ test binaries and console scripts (~200 MB that only
# extension builds and torch's own tests use). Compiled: all of torch (`import torch` itself loads
# parts of torch.testing._internal) except its py3NN_* modules, written for newer Pythons.
FROM python-base AS torch
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
RUN /opt/venv/bin/pip --isolated install --no-cache-dir --no-compile --no-deps --only-binary=:all: --progress-bar off \
        --index-url "${TORCH_INDEX_URL}" --target /opt/torch "torch==${TORCH_VERSION}" \
    && rm -rf /opt/torch/bin /opt/torch/torch/include /opt/torch/torch/test \
    && find /opt/torch/torch/bin -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} + \
    && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        -x '/torch/testing/_internal/py3[0-9]+_' /opt/torch

# Everything else, pinned with all transitive dependencies, installed without resolution;
# `pip check` then proves the set (torch included) is complete and consistent. torch's sympy,
# networkx and setuptools are installed but not compiled: serving never imports them, and
# compiling sympy alone costs a minute of build time. Dropped from ONNX Runtime: its
# quantization, transformers and tools packages (9 MB, 290 modules), which only publishing
# uses, on the publisher's machine with onnx (not in the image either); serving needs
# onnxruntime.capi alone.
# PIP_CONFIG_FILE lets a build point pip at a mirror, wheel directory or CA bundle.
FROM python-base AS deps
ARG PIP_CONFIG_FILE
COPY requirements-image.txt /tmp/requirements-image.txt
RUN --mount=type=bind,from=torch,source=/opt/torch,target=/opt/torch \
    /opt/venv/bin/pip install --no-cache-dir --no-compile --no-deps --only-binary=:all: --progress-bar off \
        --requirement /tmp/requirements-image.txt \
    && site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && echo /opt/torch > "${site}/breedserve-torch.pth" \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --quiet --yes pip \
    && rm -rf "${site}/onnxruntime/quantization" "${site}/onnxruntime/transformers" "${site}/onnxruntime/tools" \
    && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        -x '/site-packages/(sympy|mpmath|networkx|setuptools|pkg_resources)/' /opt/venv

# Our code, compiled in its own stage so the image gets it as one small layer.
FROM python-base AS code
WORKDIR /var/task
COPY handler/ handler/
COPY model_store/ model_store/
RUN /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /var/task

FROM ${BASE_IMAGE} AS runtime
# HOME=/tmp: anything that caches under ~ (torch, botocore) stays in the only writable place.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LAMBDA_TASK_ROOT=/var/task \
    MODEL_ROOT=/mnt/models
# The official python images ship the standard library without bytecode: compile it once here
# instead of on every cold start (skipping what CPython's own install skips: deliberately broken
# test files). Lambda replaces the user anyway; this one keeps local runs honest about running
# without root.
RUN python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        -x 'bad_coding|badsyntax|site-packages|lib2to3/tests/data' \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
    && useradd --uid 10001 --user-group --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin breedserve
COPY --from=torch /opt/torch /opt/torch
COPY --from=deps /opt/venv /opt/venv
WORKDIR /var/task
COPY --from=code /var/task /var/task
USER 10001:10001
ENTRYPOINT ["python", "-m", "awslambdaric"]
CMD ["handler.app.lambda_handler"]
