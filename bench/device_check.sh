#!/usr/bin/env bash
# One prepared run of the benches on a lent GPU machine (the device tool), everything in one call.
# Carried: .whl (the wheels the GPU image lacks) and .gpu/tok (the bundled tokenizer; the model itself is too
# big to travel, so the benches use random-initialised Llama configs of SmolLM2-135M's and a 1B shape).
# Each part has its own time limit and writes its output under $OUT; a failing part does not stop the rest.
#
# Preparing the carried folders here (both are git-ignored, so name them in the device call's carry):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2 transformers==5.24.0 \
#     peft==0.21.2 sqlmodel==0.0.50 SQLAlchemy==2.1.9 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
#     typing-inspection==0.4.5        # (+ datasets==4.8.4 into .whl/alt for an image with an older pyarrow)
#   then drop the CUDA 11/12, ROCm and XPU libraries from the bitsandbytes wheel (and their RECORD lines) to stay
#   under the 64 MiB carry limit, and copy the bundled model's tokenizer/config files into .gpu/tok.
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
# the open question first: 1B QLoRA, padding-free with the dense block mask vs flex attention without one,
# the dequantised-weight cache (bf16 copies of the frozen weights) and the full-logits loss
part speed_1b_nf4 200 $S --model random-1b --quant 4bit --steps 20 --batch 8 \
  --levers padding-free,flex,dequant-cache,logits,no-grouping
# where a 1B QLoRA step's time goes (GPU busy vs host), studio path then the plain script
part profile_1b_nf4_studio 75 python3 bench/profile_step.py --model random-1b --quant 4bit --tokenizer .gpu/tok
part profile_1b_nf4_plain 75 python3 bench/profile_step.py --model random-1b --quant 4bit --tokenizer .gpu/tok \
  --path plain
for f in "$OUT"/profile_*.txt; do grep -E "^(studio|plain) path|steady state|device busy|kernel launches" "$f"; done
# then the other shapes, as time allows (the call's limit is 600 s)
part speed_smollm2_bf16 100 $S --model random-smollm2 --quant none --steps 30 --batch 8 --levers flex,no-grouping
part speed_1b_bf16 60 $S --model random-1b --quant none --steps 20 --batch 8 --levers flex
exit 0
