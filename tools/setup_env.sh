#!/usr/bin/env bash
# Creates .venv/ at the repository root with the pinned OpenMMLab stack.
# Idempotent: a stamp keyed on this file's content makes a second run install nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
WHEEL_CACHE="$ROOT/.cache/wheels"
SHARED_WHEELS="$ROOT/../shared/wheels"
STAMP="$VENV/.effidense-$(sha1sum "${BASH_SOURCE[0]}" | cut -c1-12)"

if [[ -f "$STAMP" ]]; then
    exit 0
fi

step() { echo "[setup] $*"; }
fail() { echo "[setup] FAILED: $*" >&2; exit 1; }
# Every install is held to the pinned stack, so that no later step moves torch or mmcv.
CONSTRAINTS="$ROOT/tools/constraints.txt"
pip_install() {
    # pip's status survives the filter through pipefail; the filter drops this machine's harmless index noise.
    "$PY" -m pip install --quiet -c "$CONSTRAINTS" "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || fail "needs $PYTHON on PATH (the stack is pinned to Python 3.11)"

if [[ ! -x "$PY" ]]; then
    step "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV" || fail "could not create the virtual environment"
fi

step "torch 2.14.1 + torchvision 0.29.1"
pip_install torch torchvision || fail "torch install"

step "build tools, mmengine 0.10.7, timm, test and lint tools, scikit-image (the demo data's photographs)"
pip_install "setuptools>=77,<81" wheel ninja mmengine==0.10.7 timm pytest pytest-xdist ruff tqdm matplotlib psutil \
    scikit-image \
    || fail "mmengine/timm install"

if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
    step "mmcv 2.1.0 with ops already installed"
else
    FIND_LINKS=(--find-links "$WHEEL_CACHE")
    [[ -d "$SHARED_WHEELS" ]] && FIND_LINKS+=(--find-links "$SHARED_WHEELS")
    mkdir -p "$WHEEL_CACHE"
    if "$PY" -m pip install --quiet --no-index "${FIND_LINKS[@]}" mmcv==2.1.0 2>/dev/null; then
        step "mmcv 2.1.0 installed from a cached wheel"
    else
        # PyPI only has mmcv's sdist; its setup.py imports pkg_resources (kept by setuptools<81, pinned above)
        # and asks for C++14/17, but torch 2.14's headers need C++20.
        step "no cached mmcv wheel: building mmcv 2.1.0 with CPU ops (about 20-30 minutes on 2 cores)"
        BUILD_DIR="$(mktemp -d)"
        "$PY" -m pip download --quiet --no-deps --no-binary :all: mmcv==2.1.0 -d "$BUILD_DIR" \
            || fail "could not download the mmcv 2.1.0 source"
        tar -xzf "$BUILD_DIR"/mmcv-2.1.0.tar.gz -C "$BUILD_DIR"
        sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$BUILD_DIR/mmcv-2.1.0/setup.py"
        MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip wheel --no-build-isolation --no-deps \
            -w "$WHEEL_CACHE" "$BUILD_DIR/mmcv-2.1.0" || fail "mmcv build (see the compiler output above)"
        rm -rf "$BUILD_DIR"
        "$PY" -m pip install --quiet --no-index --find-links "$WHEEL_CACHE" mmcv==2.1.0 \
            || fail "installing the mmcv wheel just built"
    fi
    pip_install mmcv==2.1.0 --find-links "$WHEEL_CACHE" || fail "mmcv's dependencies"
    "$PY" -c "from mmcv.ops import RoIAlign, batched_nms" || fail "mmcv.ops does not import"
fi

step "mmdet 3.3.0, mmsegmentation 1.2.2 (+ ftfy, regex which mmseg imports undeclared)"
pip_install mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex pycocotools || fail "mmdet/mmseg install"

# mmdet3d's metadata pulls another mmdet and heavy extras; it runs with this stack, so install it bare.
step "mmdet3d 1.4.0 (without its declared dependencies) and what it imports"
pip_install --no-deps mmdet3d==1.4.0 || fail "mmdet3d install"
pip_install numba trimesh pyquaternion shapely plyfile || fail "mmdet3d's runtime imports"
# mmdet3d.evaluation imports the nuScenes and Lyft SDKs at start-up; their metadata pins numpy<2,
# which this stack does not need for the code paths mmdet3d uses, so they go in bare too.
pip_install --no-deps nuscenes-devkit lyft_dataset_sdk || fail "nuScenes/Lyft SDKs"
pip_install pandas scikit-learn cachetools || fail "the SDKs' runtime imports"

# torch.onnx.export's default (dynamo) exporter writes through onnxscript; tools/export.py checks in ONNX Runtime.
step "ONNX export and runtime (CPU builds): onnx, onnxscript, onnxruntime"
pip_install onnx onnxscript onnx_ir onnxruntime || fail "onnx/onnxruntime install"

step "this project (editable)"
pip_install --no-deps --no-build-isolation -e "$ROOT" || fail "pip install -e ."

"$PY" -c "import torch, mmcv, mmdet, mmseg, mmengine, timm, mmdet3d.evaluation, onnx, onnxscript, onnxruntime; import mmcv.ops" \
    || fail "final import check"
rm -f "$VENV"/.effidense-*
touch "$STAMP"
step "done: $VENV"
