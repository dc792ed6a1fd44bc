# The smearflow image: one image for the worker, beat, the watcher, Flower and one-off commands.
#
#   docker build -t smearflow .                                          # CPU TensorFlow
#   docker build -t smearflow --build-arg TENSORFLOW='tensorflow[and-cuda]' .   # NVIDIA GPUs
FROM python:3.11-slim

ARG TENSORFLOW=tensorflow-cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    KERAS_HOME=/tmp/keras \
    MPLCONFIGDIR=/tmp/matplotlib

# libglib2.0-0: OpenCV (headless) links against it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md* ./
COPY src ./src
# The package pins tensorflow-cpu; a GPU image swaps it for the CUDA build of the same version.
RUN pip install ".[monitor]" \
    && if [ "$TENSORFLOW" != "tensorflow-cpu" ]; then \
         version="$(pip show tensorflow-cpu 2>/dev/null | sed -n 's/^Version: //p')"; \
         pip uninstall -y tensorflow-cpu || true; \
         pip install "${TENSORFLOW}${version:+==$version}"; \
       fi

RUN useradd --create-home --uid 1000 smearflow && mkdir -p /data && chown smearflow /data
USER smearflow
WORKDIR /data

CMD ["smearflow", "--help"]
