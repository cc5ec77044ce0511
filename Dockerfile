# syntax=docker/dockerfile:1
# The dspool operator image: `docker build -t <registry>/dspool/operator:<version> .`
# Stage 1 builds the wheel; stage 2 installs it into a slim Python with no build tools.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip install --no-cache-dir --upgrade "pip>=24" "build>=1.2" \
    && python -m build --wheel --outdir /dist .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dspool" \
      org.opencontainers.image.description="Kubernetes operator that sizes, places and serves DeepSeek models on pooled NVIDIA GPUs and Huawei Ascend NPUs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist/*.whl /tmp/
# One layer: install the wheel and its dependencies, drop the wheel.
RUN python -m pip install --no-cache-dir /tmp/dspool-*.whl && rm -f /tmp/*.whl
# A fixed non-root UID that the chart's securityContext names (runAsUser 65532).
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["dspool", "run"]
