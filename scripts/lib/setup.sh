# Shared set-up for scripts/demo, scripts/test and scripts/bench: installs what is missing, idempotently.
# Debian packages: fuse3 (fusermount3, /dev/fuse user side), libfuse3-dev + pkg-config (to build pyfuse3),
# a C compiler and Python headers (pyfuse3 ships no wheels). Then a .venv with the project and its tests.

PROJECT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="$PROJECT_DIR/.venv"

say() { printf '%s\n' "pinfs setup: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root (or sudo) to run: $*"; return 1; fi
}

python_ok() {
    # A python3 that can make venvs and has the headers pyfuse3 compiles against.
    command -v python3 >/dev/null &&
        python3 -c 'import sys, venv, ensurepip, sysconfig, os; sys.exit(0 if sys.version_info >= (3, 10) and os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' 2>/dev/null
}

ensure_system_packages() {
    local missing=()
    for package in fuse3 libfuse3-dev pkg-config; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    command -v cc >/dev/null || missing+=(gcc)
    python_ok || missing+=(python3 python3-venv python3-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ ! -e /dev/fuse ]; then
        # The mount tests need it: try the module, then the device node (10:229), before giving up.
        as_root modprobe fuse 2>/dev/null || true
        [ -e /dev/fuse ] || as_root mknod -m 0666 /dev/fuse c 10 229 2>/dev/null || true
    fi
    if [ ! -e /dev/fuse ]; then
        say "warning: /dev/fuse does not exist here; mounting will fail (load the fuse module or run with --device /dev/fuse)"
    fi
}

ensure_test_system_packages() {
    # What only the tests need: chromium renders insights.svg to a PNG, zsh runs the zsh completion,
    # systemd-analyze checks the printed unit.
    local missing=()
    for package in chromium zsh systemd; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages for the tests: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_venv() {
    local stamp="$VENV/.pinfs-installed" want
    want=$(sha256sum "$PROJECT_DIR/pyproject.toml" | cut -d' ' -f1)
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    say "creating $VENV and installing pinfs with its test dependencies"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$PROJECT_DIR[test]"
    echo "$want" >"$stamp"
}
