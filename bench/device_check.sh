#!/usr/bin/env bash
# One prepared run of the benches on a lent GPU machine (the device tool), everything in one call.
# Carried: .whl (the wheels the GPU image lacks) and .gpu/tok (the bundled tokenizer; the model itself is too
# big to travel, so the benches use random-initialised Llama configs of SmolLM2-135M's and a 1B shape).
# Each part has its own time limit and writes its output under $OUT; a failing part does not stop the rest.
set -u
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$OUT/install.txt" 2>&1 || { cat "$OUT/install.txt"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD STUDIO_HOME=/tmp/studio-home HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
  TOKENIZERS_PARALLELISM=false
if ! python3 -c "import datasets" 2>/dev/null; then  # an older pyarrow in the image: datasets 4.8 accepts it
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/alt/*.whl >> "$OUT/install.txt" 2>&1
fi
python3 - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import importlib, torch
print("gpu:", torch.cuda.get_device_name(), "torch", torch.__version__)
for m in ("transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "pyarrow"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as exc:
        print(m, "FAILED", repr(exc)[:300])
PY
part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name: exit $? in $((SECONDS - t0)) s"
  grep -E "^ *(plain|studio|ratio|machine|data)|^  [a-z].*(tok/s|plain)|achieved|^\|| min " "$OUT/$name.txt" | grep -v Warning
}
S="python3 bench/train_speed.py --tokenizer .gpu/tok"
part speed_smollm2_bf16 120 $S --model random-smollm2 --quant none --steps 40 --batch 8 --levers
part speed_smollm2_nf4 120 $S --model random-smollm2 --quant 4bit --steps 40 --batch 8 --levers
python3 -c "
import sys; sys.path.insert(0, 'bench'); from pathlib import Path; import torch, train_speed as t
for n in ('random-smollm2', 'random-1b'):
    print(t.random_model(n, Path('.gpu/tok'), Path('/tmp/studio-home/bench-out/models'), torch.bfloat16))" > "$OUT/models.txt" 2>&1
part memory_smollm2 90 python3 bench/memory.py --device cuda --batch 4 --steps 2 \
  --model /tmp/studio-home/bench-out/models/random-smollm2-bfloat16 --save "$OUT/memory_smollm2.json"
part speed_1b_bf16 70 $S --model random-1b --quant none --steps 20 --batch 8
part speed_1b_nf4 70 $S --model random-1b --quant 4bit --steps 20 --batch 8
part memory_1b 50 python3 bench/memory.py --device cuda --batch 4 --steps 2 \
  --model /tmp/studio-home/bench-out/models/random-1b-bfloat16 --save "$OUT/memory_1b.json"
exit 0
