# The worker image: `adjustments worker` by default; `adjustments beat` for the scheduler.
# A pinned base (Python patch release and Debian release); the dependency layer is built from
# the lock file and cached apart from the source; the processes run as a non-root user.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ADJUSTMENTS_DATA_DIR=/var/lib/adjustments

RUN useradd --system --uid 10001 --create-home adjustments \
    && mkdir -p /var/lib/adjustments && chown adjustments /var/lib/adjustments

WORKDIR /app

# Dependencies only, at the versions of the lock file: rebuilt when pyproject.toml or
# constraints.txt change, not when the source does.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt

# The package itself (its dependencies are already there).
COPY README.md ./
COPY worker ./worker
RUN pip install --no-deps -c constraints.txt . && rm -rf build

USER adjustments
# Alive and consuming: this container's worker beats in Redis (every 5 s; dead after 15 s),
# and Redis answers. (For a beat container, override it: beat has no heartbeat.)
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["adjustments", "health"]
CMD ["adjustments", "worker"]
