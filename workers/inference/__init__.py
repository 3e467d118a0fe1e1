"""Serving adapters over HTTP: an OpenAI-compatible server (server.py) over a many-base engine (engine.py).

On a GPU host with vLLM installed, `studio infer --engine vllm` puts the same endpoint in front of a
``vllm serve --enable-lora`` child (vllm_engine.py); the transformers + peft path is the default and the
one CI runs.
"""
