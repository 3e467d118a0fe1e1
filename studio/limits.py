"""Every size a user or a client can send, in one place (the README's "Limits" table lists them).

Each limit is checked where the input arrives (a form, the command line, a YAML job file, an HTTP request)
and refused there with one sentence that names it, before anything is queued, allocated or written.
"""
from __future__ import annotations

# ---- the training form, job files and the command line --------------------------------------------
GOLDEN_PROMPTS = 50                 # golden prompts a run may have
GOLDEN_PROMPT_CHARS = 8_000         # characters in one golden prompt (or its reference answer)
FILL_VALUE_CHARS = 500              # characters in one template-blank value (a name, a maker)
FILL_VALUES = 50                    # template blanks filled for one dataset
SHOWN_VALUE_CHARS = 80              # a fill value shown in a table cell is cut to this many characters

# ---- the OpenAI-compatible endpoint ----------------------------------------------------------------
REQUEST_BODY_BYTES = 4 * 1024 * 1024   # one /v1 request body (a long conversation of a 128k-token model fits)
MESSAGES = 2_048                    # messages in one request
STOP_SEQUENCES = 4                  # OpenAI's own limit
STOP_SEQUENCE_CHARS = 256
SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's seed is a 64-bit integer
REQUESTS_IN_FLIGHT = 32             # requests one inference server answers at once; more wait for a 429's retry
