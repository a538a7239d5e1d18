#!/usr/bin/env bash
# The GPU checks of a session that is lent a device machine, as one command (see
# benches/README.md, "Training throughput on a GPU"). The device machine has torch but not
# anndata: build the abi3 wheel and download the wheels it needs into .whl/ first, here:
#
#   echo /.whl/ >> .git/info/exclude
#   ~/.venvs/scvi-rs/bin/maturin build --release -o .whl
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl anndata h5py pandas scipy natsort \
#     array-api-compat legacy-api-wrap zarr numcodecs donfig crc32c google-crc32c \
#     session-info2 scverse-misc pytz tzdata python-dateutil six tqdm pytest pluggy \
#     iniconfig pytest-benchmark py-cpuinfo2 hypothesis sortedcontainers
#
# then call the device tool with carry [".whl"] and the command `bash benches/gpu_run.sh`.
# Everything it prints lands in $OUT/gpu_run.log too.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_run.log") 2>&1
export PYTHONUNBUFFERED=1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, scvi_rs; print(torch.__version__, torch.cuda.is_available(), scvi_rs.__version__)"

echo "== CUDA tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/test_module_vae.py \
  tests/test_model_base.py tests/test_dataloaders_loader.py tests/test_train_host_reads.py

echo "== training throughput, 1,000,000 x 2,000 (10%), batch 128 and 1024"
timeout 300 python3 benches/bench_train.py --device cuda --case 1m_2000g --batch-size 128 1024 \
  --libraries scvi_rs --device-backed
echo "== training throughput, 200,000 x 30,000 (3%), batch 1024"
timeout 240 python3 benches/bench_train.py --device cuda --case 200k_30000g --batch-size 1024 \
  --libraries scvi_rs --device-backed
