FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY etl ./etl
COPY migrations ./migrations
RUN pip install --no-cache-dir -e .
USER nobody
ENTRYPOINT []
CMD ["tcxc-etl", "--help"]
