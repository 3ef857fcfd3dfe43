# The recommendation service: API server by default; the same image runs `recsys train` etc.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    # implicit and the web server each manage their own threads; BLAS must not add more
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, in their own layer: only pyproject.toml changes invalidate it.
COPY pyproject.toml README.md ./
RUN mkdir -p recsys features training serving \
 && touch recsys/__init__.py features/__init__.py training/__init__.py serving/__init__.py \
 && pip install . \
 && pip uninstall -y recsys

# Then the code.
COPY recsys ./recsys
COPY features ./features
COPY training ./training
COPY serving ./serving
COPY experiments ./experiments
RUN pip install --no-deps .

EXPOSE 8000
# Serve the registry's champion (set MLFLOW_TRACKING_URI) or mount a bundle and pass --bundle.
ENTRYPOINT ["recsys"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
