#!/usr/bin/env bash
# Issue 14, for a GPU machine: the original 100-epoch Pix2Pix run (train.py --preset seed), its evaluation on every
# split, the GPU-marked tests, and the app answering on CUDA. Everything it makes goes under $OUT (default runs/gpu).
#
#   bash scripts/gpu_run.sh                 # on the GPU: ~100 epochs of 230 photos at 256x256
#   TINY=1 OUT=/tmp/gpu-smoke bash scripts/gpu_run.sh   # the same steps on a CPU in a few minutes (1 epoch, tiny U-Net)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
[ -x "$PY" ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements-dev.txt; }
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/device.txt"
nvidia-smi >> "$OUT/device.txt" 2>&1 || true

# 1. The original run. Only what the device demands differs from the CPU defaults: --device auto picks cuda and
#    bf16 autocast (--amp, CUDA only); the exported weights are fp16 to keep the repository small.
TRAIN=(--preset seed --run-id pix2pix-seed --out-dir "$OUT/runs" --export-to "$OUT/pix2pix-seed" --half --workers 4)
[ "${TINY:-0}" = 1 ] && TRAIN+=(--epochs 1 --limit 8 --size 64 --ngf 8 --ndf 8 --no-eval-test)
"$PY" train.py "${TRAIN[@]}" 2>&1 | tee "$OUT/train.log"

# 2. The package's evaluate command on every val and test split, through the served pipeline.
"$PY" -m segmenter.evaluate "$OUT/pix2pix-seed" --all --no-progress | tee "$OUT/evaluate.md"

# 3. GPU-marked tests (they skip on a CPU).
"$PY" -m pytest -q -p no:cacheprovider tests/test_mask_api.py tests/test_pipeline.py 2>&1 | tee "$OUT/pytest.log"

# 4. The app on this device: POST /api/segment and /segment through gradio_client, timed for 1 and 12 MP photos.
"$PY" - "$OUT" <<'PYEOF' 2>&1 | tee "$OUT/app.log"
import sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "tests"); sys.path.insert(0, "bench")
from common import gradio_client, jpeg_bytes, write_temp_jpeg
from served_app import post_photo, serve_app
out = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as logs, serve_app(out / "pix2pix-seed", Path(logs)) as app:
    client = gradio_client(app.url)
    for mp in (1.0, 12.0):
        data = jpeg_bytes(mp)
        post_photo(app.url, data)  # warm-up
        t = time.perf_counter(); r = post_photo(app.url, data, output="mask"); http = time.perf_counter() - t
        path = write_temp_jpeg(data)
        from gradio_client import handle_file
        t = time.perf_counter(); client.predict(handle_file(str(path)), api_name="/segment"); gc = time.perf_counter() - t
        print(f"{mp:g} MP: HTTP {r.status_code} {http:.3f} s, gradio_client {gc:.3f} s, person present {r.headers.get('x-person-present')}")
    print(Path(app.log).read_text()[-2000:])
PYEOF
echo "done: $OUT"
