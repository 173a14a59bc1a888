#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) and install ImplantFL into it.
#
#   TORCH_SPEC       torch requirement to install first (default: torch==2.13.0, the CPU
#                    build our machines carry). A GPU site sets e.g. TORCH_SPEC=torch==2.13.0
#                    and TORCH_INDEX_URL to PyTorch's CUDA wheel index for its CUDA version.
#   TORCH_INDEX_URL  optional extra index for the torch wheel.
#   IMPLANTFL_VENV   where the environment lives (default: .venv in the repository).
#
# Re-running is cheap: nothing is reinstalled when pyproject.toml has not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${IMPLANTFL_VENV:-.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${1:-dev}"

# The dashboard's browser tests drive Debian's Chromium (no browser download at test time).
if [ "$EXTRAS" = "dev" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian chromium (for the dashboard's browser tests)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/tmp/implantfl-apt.log 2>&1; then
      apt-get update -q >>/tmp/implantfl-apt.log 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>/tmp/implantfl-apt.log 2>&1 \
        || echo "[setup] could not install chromium (see /tmp/implantfl-apt.log): the browser tests will be skipped" >&2
    fi
  else
    echo "[setup] /usr/bin/chromium is missing: the dashboard's browser tests are skipped (as root: apt-get install chromium)" >&2
  fi
fi

# gVirtualXray (rendering manufacturers' meshes) loads EGL/Mesa and a few X libraries at import.
GVXR_DEBS="libxcb-res0 libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libglx-mesa0 libxcb-ewmh2 libxcb-composite0 libxcb-xinerama0 libxcb-keysyms1 libxcb-icccm4"
if command -v dpkg-query >/dev/null 2>&1; then
  missing=""
  for pkg in $GVXR_DEBS; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      echo "[setup] installing the libraries gVirtualXray needs:$missing"
      # shellcheck disable=SC2086
      if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >>/tmp/implantfl-apt.log 2>&1; then
        apt-get update -q >>/tmp/implantfl-apt.log 2>&1 || true
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >>/tmp/implantfl-apt.log 2>&1 \
          || echo "[setup] could not install them (see /tmp/implantfl-apt.log): rendering meshes will say what is missing" >&2
      fi
    else
      echo "[setup] rendering meshes (gVirtualXray) needs, as root: apt-get install$missing" >&2
    fi
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.implantfl-installed"
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] environment up to date"
  exit 0
fi
log="$VENV/pip-install.log"
pip_install() {
  # pip's output goes to a log; shown only if the install fails.
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[setup] pip install failed; full log in $log" >&2
    exit 1
  fi
}
: >"$log"
echo "[setup] installing $TORCH_SPEC"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  pip_install "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX_URL"
else
  pip_install "$TORCH_SPEC"
fi
echo "[setup] installing implantfl[$EXTRAS] and its dependencies (editable)"
pip_install -e ".[$EXTRAS]"
echo "$want" > "$stamp"
echo "[setup] done"
