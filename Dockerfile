# syntax=docker/dockerfile:1
# llmgateway: multi-stage build, runs as a non-root user, health-checked over grpc.health.v1.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt pyproject.toml ./
COPY clients/python clients/python
COPY server server
RUN python -m venv /opt/llmgateway \
    && /opt/llmgateway/bin/pip install -c constraints.txt ./clients/python .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 llmgateway \
    && useradd --system --uid 10001 --gid llmgateway --no-create-home --shell /usr/sbin/nologin llmgateway
COPY --from=build /opt/llmgateway /opt/llmgateway
ENV PATH=/opt/llmgateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["llmgateway", "health", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["llmgateway", "run"]
CMD ["--listen", "0.0.0.0:50051"]
