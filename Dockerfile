FROM python:3.11-slim
WORKDIR /app
# The pinned runtime set, every file checked against its hash (requirements/runtime.lock,
# written by `make lock`); a layer of its own, rebuilt only when the lock file changes.
COPY requirements/runtime.lock requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.lock
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
# symbiont itself, nothing resolved or downloaded but its build backend
RUN pip install --no-cache-dir --no-deps .
# The migrations directory is found next to the installed `core` package's source tree.
ENV PYTHONPATH=/app
USER nobody
# The API (`symbiont api --host 0.0.0.0`); ingest and rules serve metrics on SYMBIONT_METRICS_PORT.
EXPOSE 8000
# Every service is a `symbiont` command: `docker run IMAGE ingest`, `… rules`, `… api --host
# 0.0.0.0`, and the broker configuration without a local install (docs/tls.md):
#   docker run --rm -u "$(id -u):$(id -g)" -v "$PWD/deploy/broker:/out" IMAGE \
#     broker-config /app/examples/kalundborg.yaml --out /out --tls
ENTRYPOINT ["symbiont"]
