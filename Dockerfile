FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY ingest ingest
COPY rules rules
COPY api api
COPY migrations migrations
COPY examples examples
RUN pip install --no-cache-dir .
# The migrations directory is found next to the installed `core` package's source tree.
ENV PYTHONPATH=/app
USER nobody
ENTRYPOINT ["symbiont"]
