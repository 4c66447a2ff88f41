# One image for the API and the workers of the distributed deployment (docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY backend ./backend
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-cache-dir '.[ml]'
EXPOSE 8000
CMD ["maskloop", "serve", "--host", "0.0.0.0"]
