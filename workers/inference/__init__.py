"""Serving adapters over HTTP: an OpenAI-compatible server (server.py) over a many-base engine (engine.py).

vLLM (``--enable-lora``) may one day serve behind the same endpoint on a GPU host; today the
transformers + peft path is the one built and tested.
"""
