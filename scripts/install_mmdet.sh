#!/usr/bin/env bash
# Install mmdet 3.3.0 (+ mmcv 2.1.0 with CPU ops, mmengine) into an existing venv, reproducibly.
#
# Usage: scripts/install_mmdet.sh [VENV_PYTHON]        (default: .venv/bin/python)
#   MMDET_WHEEL_CACHE  where built mmcv wheels are kept (default ~/.cache/retail-recognition/wheels)
#   MAX_JOBS           parallel compile jobs for the mmcv build (default 2)
#
# Why it is not a plain `pip install mmdet`:
# - mmdet 3.3.0 asserts mmcv >= 2.0.0rc4, < 2.2.0 at import but does not pin it (pip picks 2.2.0).
# - mmcv-lite lacks mmcv._ext (RoIAlign, nms), which mmdet imports.
# - mmcv 2.1.0 has no wheel for our torch, and its sdist needs setuptools < 70 (setup.py imports
#   pkg_resources), --no-build-isolation (setup.py imports torch) and -std=c++20 instead of
#   -std=c++17 (torch >= 2.14 headers need C++20). The build takes ~20 min on 2 cores, so the
#   wheel is cached, keyed by mmcv/torch/python/platform; a second install takes seconds.
# - mmengine's wheel requires the GUI `opencv-python`; we use opencv-python-headless only (two cv2
#   distributions overwrite each other). mmengine-lite is the same `mmengine` code without that
#   requirement, so we install it and make our mmcv wheel depend on it: `pip check` stays clean.
set -euo pipefail

PY_ARG="${1:-.venv/bin/python}"
MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMDET_VERSION=3.3.0
# Runtime deps of mmcv/mmengine-lite/mmdet that requirements.txt does not already bring
# (numpy, scipy, matplotlib, pycocotools, pyyaml, rich, tqdm, packaging, Pillow are there).
RUNTIME_DEPS=(addict==2.4.0 yapf==0.43.0 termcolor==3.3.0 terminaltables==3.1.10 shapely==2.2.0 six==1.17.0)
BUILD_DEPS=("setuptools<70" wheel)   # ninja is added below when the system has none
RECIPE=r1   # bump when the patch or build flags change: invalidates cached wheels
CACHE_ROOT="${MMDET_WHEEL_CACHE:-$HOME/.cache/retail-recognition/wheels}"
export MAX_JOBS="${MAX_JOBS:-2}"

log() { printf '[install_mmdet %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x "$PY_ARG" ]] || die "python '$PY_ARG' not found or not executable (pass the venv python as \$1)"
# Absolute path without resolving the venv's python symlink (resolving it would leave the venv).
PY="$(cd "$(dirname "$PY_ARG")" && pwd)/$(basename "$PY_ARG")"
pip_() { "$PY" -m pip --disable-pip-version-check "$@"; }
dist_version() { "$PY" -c 'import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$1"; }

"$PY" -c 'import torch, cv2' || die "torch and cv2 (opencv-python-headless) must already be installed in $PY"
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)')"
PY_TAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
PLATFORM="$("$PY" -c 'import sysconfig; print(sysconfig.get_platform())')"
KEY="mmcv-${MMCV_VERSION}_torch-${TORCH_VERSION}_${PY_TAG}_${PLATFORM}_cpuops_${RECIPE}"
WHEEL_DIR="$CACHE_ROOT/$KEY"
log "python=$PY torch=$TORCH_VERSION tag=$PY_TAG platform=$PLATFORM"
log "mmcv wheel cache: $WHEEL_DIR"

WORK=""
ORIG_SETUPTOOLS="$(dist_version setuptools)"
ADDED_BUILD_TOOLS=()   # build-only packages absent before the build: removed afterwards
[[ -n "$(dist_version wheel)" ]] || ADDED_BUILD_TOOLS+=(wheel)
if ! command -v ninja >/dev/null 2>&1; then
  # Without ninja torch compiles the 77 sources one by one; pip's ninja lands in the venv's bin.
  BUILD_DEPS+=(ninja)
  [[ -n "$(dist_version ninja)" ]] || ADDED_BUILD_TOOLS+=(ninja)
  export PATH="$(dirname "$PY"):$PATH"
fi
BUILD_DEPS_TOUCHED=0

restore_build_deps() {
  # Put the venv back the way requirements.txt left it: torch needs setuptools >= 77.
  [[ "$BUILD_DEPS_TOUCHED" == 1 ]] || return 0
  BUILD_DEPS_TOUCHED=0
  if ((${#ADDED_BUILD_TOOLS[@]})); then
    log "removing build-only tools: ${ADDED_BUILD_TOOLS[*]}"
    pip_ uninstall -y -q "${ADDED_BUILD_TOOLS[@]}" || log "WARNING: could not uninstall ${ADDED_BUILD_TOOLS[*]}"
  fi
  if pip_ check >/dev/null 2>&1; then
    log "pip check is clean with setuptools $(dist_version setuptools): keeping it"
  elif [[ -n "$ORIG_SETUPTOOLS" ]]; then
    log "pip check complains (torch needs setuptools>=77): restoring setuptools==$ORIG_SETUPTOOLS"
    pip_ install -q "setuptools==$ORIG_SETUPTOOLS" || log "WARNING: could not restore setuptools==$ORIG_SETUPTOOLS"
  fi
}

cleanup() {
  local rc=$?
  restore_build_deps
  [[ -n "$WORK" && -d "$WORK" ]] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

find_cached_wheel() {
  local f
  shopt -s nullglob
  for f in "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl; do echo "$f"; break; done
  shopt -u nullglob
}

build_mmcv_wheel() {
  local t0 src n
  t0=$SECONDS
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/mmcv-build.XXXXXX")"

  log "[build 1/4] build deps: ${BUILD_DEPS[*]} (setup.py imports pkg_resources, gone in setuptools>=70)"
  BUILD_DEPS_TOUCHED=1
  log "  (pip will report that torch needs setuptools>=77: expected, restored after the build)"
  pip_ install -q "${BUILD_DEPS[@]}"

  log "[build 2/4] downloading mmcv==$MMCV_VERSION sdist"
  # --no-build-isolation: preparing metadata runs setup.py, which imports torch and pkg_resources.
  pip_ download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$WORK/sdist"
  tar -xzf "$WORK/sdist/mmcv-$MMCV_VERSION.tar.gz" -C "$WORK"
  src="$WORK/mmcv-$MMCV_VERSION"
  [[ -f "$src/setup.py" ]] || die "sdist has no setup.py at $src"

  log "[build 3/4] patching setup.py (-std=c++17 -> -std=c++20) and requirements (mmengine -> mmengine-lite)"
  n="$(grep -c -- '-std=c++17' "$src/setup.py" || true)"
  grep -qF -- "extra_compile_args['cxx'] = ['-std=c++17']" "$src/setup.py" \
    || die "pattern \"extra_compile_args['cxx'] = ['-std=c++17']\" not found in mmcv $MMCV_VERSION setup.py: recheck the patch"
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  ! grep -q -- '-std=c++17' "$src/setup.py" || die "-std=c++17 still present in setup.py after patching"
  log "  replaced $n occurrence(s) of -std=c++17"
  grep -qx 'mmengine>=0.3.0' "$src/requirements/runtime.txt" \
    || die "line 'mmengine>=0.3.0' not found in mmcv $MMCV_VERSION requirements/runtime.txt: recheck the patch"
  sed -i 's/^mmengine>=0.3.0$/mmengine-lite>=0.3.0/' "$src/requirements/runtime.txt"

  log "[build 4/4] compiling mmcv $MMCV_VERSION with CPU ops (MAX_JOBS=$MAX_JOBS; ~20 min on 2 idle cores, over an hour on busy ones)"
  (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 \
    pip_ wheel -v --no-build-isolation --no-deps -w "$WORK/dist" .)
  local built
  built="$(find "$WORK/dist" -maxdepth 1 -name "mmcv-$MMCV_VERSION-*.whl" | head -n1)"
  [[ -n "$built" ]] || die "pip wheel produced no mmcv-$MMCV_VERSION wheel in $WORK/dist"
  "$PY" - "$built" <<'EOF' || die "built wheel has no compiled mmcv._ext: ops were not built"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(0 if any(n.startswith("mmcv/_ext") and n.endswith(".so") for n in names) else 1)
EOF

  # Atomic publish into the cache: copy under a temp name in the same folder, then rename.
  mkdir -p "$WHEEL_DIR"
  local dest="$WHEEL_DIR/$(basename "$built")"
  cp "$built" "$dest.tmp.$$"
  sync "$dest.tmp.$$" 2>/dev/null || true
  mv -f "$dest.tmp.$$" "$dest"
  restore_build_deps
  log "built and cached $dest in $((SECONDS - t0)) s"
}

T_START=$SECONDS
WHEEL="$(find_cached_wheel)"
if [[ -n "$WHEEL" ]]; then
  log "using cached mmcv wheel $(basename "$WHEEL")"
else
  log "no cached mmcv wheel for this key: building from source"
  build_mmcv_wheel
  WHEEL="$(find_cached_wheel)"
  [[ -n "$WHEEL" ]] || die "wheel missing from cache after build"
fi

log "installing runtime deps: ${RUNTIME_DEPS[*]}"
pip_ install -q "${RUNTIME_DEPS[@]}"
LITE_FLAGS=()
if [[ -n "$(dist_version mmengine)" ]]; then
  # Same files as mmengine-lite: uninstalling it deletes them, so lite is then force-reinstalled.
  log "replacing full 'mmengine' (requires opencv-python) with mmengine-lite"
  pip_ uninstall -y -q mmengine
  LITE_FLAGS=(--force-reinstall)
elif [[ -n "$(dist_version mmengine-lite)" ]] && ! "$PY" -c 'import mmengine' 2>/dev/null; then
  log "mmengine-lite is recorded but its files are gone (a full mmengine was uninstalled over it): reinstalling"
  LITE_FLAGS=(--force-reinstall)
fi
log "installing mmcv (cached wheel), mmengine-lite==$MMENGINE_VERSION, mmdet==$MMDET_VERSION with --no-deps"
pip_ install -q --no-deps "$WHEEL" "mmdet==$MMDET_VERSION"
pip_ install -q --no-deps "${LITE_FLAGS[@]}" "mmengine-lite==$MMENGINE_VERSION"

log "checking the environment"
for gui in opencv-python opencv-contrib-python; do
  # Both write cv2/: uninstall both, then reinstall opencv-python-headless (as requirements.txt pins it).
  [[ -z "$(dist_version "$gui")" ]] || die "$gui is installed next to opencv-python-headless: uninstall both, reinstall headless"
done
pip_ check || die "pip check failed"
"$PY" -c "import mmcv, mmdet; from mmcv.ops import nms, RoIAlign; print('mmcv', mmcv.__version__, '| mmdet', mmdet.__version__)"
log "done in $((SECONDS - T_START)) s"
