# The worker image: `adjustments worker` by default; `adjustments beat` for the scheduler.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ADJUSTMENTS_DATA_DIR=/var/lib/adjustments

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip install --no-cache-dir . \
    && useradd --system --create-home adjustments \
    && mkdir -p /var/lib/adjustments && chown adjustments /var/lib/adjustments

USER adjustments
CMD ["adjustments", "worker"]
