FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY ingest ingest
COPY rules rules
COPY statements statements
COPY notify notify
COPY api api
COPY cli cli
COPY migrations migrations
COPY examples examples
RUN pip install --no-cache-dir .
# The migrations directory is found next to the installed `core` package's source tree.
ENV PYTHONPATH=/app
USER nobody
# The API (`symbiont api --host 0.0.0.0`); ingest and rules serve metrics on SYMBIONT_METRICS_PORT.
EXPOSE 8000
# Every service is a `symbiont` command: `docker run IMAGE ingest`, `… rules`, `… api --host
# 0.0.0.0`, and the broker configuration without a local install (docs/deployment.md):
#   docker run --rm -u "$(id -u):$(id -g)" -v "$PWD/deploy/broker:/out" IMAGE \
#     broker-config /app/examples/kalundborg.yaml --out /out
ENTRYPOINT ["symbiont"]
