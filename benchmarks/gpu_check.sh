#!/usr/bin/env bash
# GPU check: build the CUDA kernels, run every test (CUDA ones included), print the benchmark tables.
#   bash benchmarks/gpu_check.sh            (on a machine with an NVIDIA GPU, nvcc and PyTorch; no network needed)
# Environment: PYTHON (default python3), DYNREFER_CUDA_ARCHS (default: this GPU's compute capability).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if [ -z "${DYNREFER_CUDA_ARCHS:-}" ]; then
    DYNREFER_CUDA_ARCHS=$($PY -c "import torch; p=torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')" 2>/dev/null || echo 90)
fi
export DYNREFER_CUDA=1 DYNREFER_CUDA_ARCHS
echo "== build (sm_${DYNREFER_CUDA_ARCHS})"
start=$(date +%s)
$PY -m pip install --no-build-isolation --no-deps -q -e . || { echo "BUILD FAILED"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"
$PY -c "import dynrefer, torch; print('torch', torch.__version__, '| dynrefer.cuda_available():', dynrefer.cuda_available()); assert dynrefer.cuda_available()" || exit 1
echo "== tests (CUDA ones included: the tiled kernels against torchvision and the official PIL pipeline)"
$PY -m pytest -q -p no:cacheprovider tests/test_roi_align.py tests/test_roi_align_core.py tests/test_views.py tests/test_views_core.py tests/test_dcnv4.py tests/test_dcnv4_core.py -rs 2>&1 | tail -15
status=${PIPESTATUS[0]}
echo "== training engine on CUDA (fp16 + GradScaler, bf16, NCCL-free single process)"
$PY -m pytest -q -p no:cacheprovider tests/test_train_optim.py tests/test_train_checkpoint.py -rs 2>&1 | tail -5
$PY -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_attention_core.py tests/test_attention_tc.py -x -rs 2>&1 | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== benchmarks (CUDA)"
$PY benchmarks/bench_roi_align.py --device cuda
$PY benchmarks/bench_views.py --device cuda
echo "-- training engine overhead"
$PY benchmarks/bench_train.py --device cuda
echo "== DCNv4 (CUDA)"
$PY benchmarks/bench_dcn.py --device cuda
echo "== model (tests/test_model_*.py on CUDA where they can, model benchmark)"
$PY -m pytest -q -p no:cacheprovider tests/test_model_nn.py tests/test_model_core.py tests/test_model_loading.py tests/test_model_misc.py -x -rs 2>&1 | tail -8
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "-- the model with the dynrefer kernels forced on (the dispatch table decides otherwise)"
DYNREFER_CUDA_DISPATCH=dynrefer $PY benchmarks/bench_model.py --device cuda
$PY benchmarks/bench_attention.py --device cuda
echo "== dispatch table: dynrefer kernel vs peer per op on this GPU (written to dynrefer/nn/cuda_dispatch.json)"
$PY benchmarks/cuda_dispatch.py --write
echo "-- the model with the table's choice"
$PY benchmarks/bench_model.py --device cuda
exit $status
