"""gVirtualXray in this process: import it with a clear message, one quiet OpenGL context.

gVirtualXray (``gvxr`` on PyPI) renders headless through EGL and Mesa (a GPU's driver
when there is one). Its import needs a few Debian libraries besides the wheel; when they
are missing the user gets one message naming them (and the set-up script that installs
them), never a traceback. The library prints to the process's own stdout and stderr on
every call; those file descriptors are pointed at a log file while it runs, so a
terminal (and a progress bar) stays readable.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import ConfigError

DEBIAN_PACKAGES = ("libxcb-res0", "libegl1", "libegl-mesa0", "libgl1-mesa-dri", "libgles2", "libglx-mesa0",
                   "libxcb-ewmh2", "libxcb-composite0", "libxcb-xinerama0", "libxcb-keysyms1", "libxcb-icccm4")
PIP_PACKAGES = ("gvxr", "trimesh", "manifold3d", "shapely", "mapbox-earcut")
_state: dict[str, object] = {}


def missing_message(detail: str) -> str:
    return ("rendering meshes needs gVirtualXray and its system libraries (" + detail + "). "
            "Run scripts/setup_env.sh (as root it installs everything), or install them yourself: "
            f"pip install {' '.join(PIP_PACKAGES)}; apt-get install {' '.join(DEBIAN_PACKAGES)}")


def log_path() -> Path:
    return Path(tempfile.gettempdir()) / f"implantfl-gvxr-{os.getpid()}.log"


@contextmanager
def quiet() -> Iterator[None]:
    """Point this process's stdout and stderr file descriptors at the gVirtualXray log meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def check_mesh_tools() -> None:
    """Raise ``ConfigError`` (with what to install) unless the mesh libraries import."""
    try:
        import manifold3d  # noqa: F401
        import mapbox_earcut  # noqa: F401
        import shapely  # noqa: F401
        import trimesh  # noqa: F401
    except ImportError as e:
        raise ConfigError(missing_message(f"the Python package {e.name or 'a mesh library'} is missing")) from None


def check_available() -> None:
    """Raise ``ConfigError`` (with what to install) unless gVirtualXray and the mesh tools work here."""
    check_mesh_tools()
    gvxr()


def gvxr():
    """The ``gvxr`` module with an OpenGL context of this process (created on first use)."""
    if "gvxr" in _state:
        return _state["gvxr"]
    try:
        with quiet():
            from gvxrPython3 import gvxr as module
    except ImportError as e:
        text = str(e)
        lib = text.split(":")[0].strip() if ".so" in text else ""
        detail = f"the library {lib} cannot be loaded" if lib else "the gvxr package is missing"
        raise ConfigError(missing_message(detail)) from None
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    try:
        with quiet():
            module.useLogFile(str(log_path()))
            module.createOpenGLContext()
    except Exception as e:  # noqa: BLE001 - a context failure is an installation problem, said once
        raise ConfigError(missing_message(f"no OpenGL context: {type(e).__name__}")) from None
    _state["gvxr"] = module
    return module
