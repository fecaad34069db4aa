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
    command -v git >/dev/null || missing+=(git)
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
    # systemd-analyze checks the printed unit, faketime runs pinfs under a wrong clock (issue #15).
    local missing=()
    for package in chromium zsh systemd faketime; do
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
    if ! { [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
        say "creating $VENV and installing pinfs with its test dependencies"
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q -e "$PROJECT_DIR[test]"
        echo "$want" >"$stamp"
    fi
    compile_pinfs
}

compile_pinfs() {
    # pip byte-compiles a package it installs, but not the sources of an editable install: those are
    # compiled at first import, and where PYTHONDONTWRITEBYTECODE is set (as on the machine of the
    # issue #12 measurements) never written, so every pinfs process compiled its ~110 modules again:
    # ~0.35 s of each command and of mount ready. Quick when the bytecode is current.
    "$VENV/bin/python" -m compileall -q "$PROJECT_DIR/pinfs" >/dev/null
}

ensure_test_servers() {
    # The driver tests' servers that come from npm (tests/npm/<name>/: js-ipfs, the Storacha service).
    # Each is installed as its lock file says into a cache outside the checkout, keyed by the lock
    # (js-ipfs is ~1000 packages and takes minutes), and tests/npm/<name>/node_modules (git-ignored)
    # links to it, so a fresh clone on the same machine (CI) installs nothing. `npm install`, not
    # `npm ci`: js-ipfs has an optional dependency on a GitHub tarball that the lock cannot hold, and
    # optional dependencies are left out. The tests fail, never skip, when a server is missing, so an
    # install that fails stops here.
    local cache="${PINFS_TEST_SERVERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pinfs-test-servers}"
    local dir name want target link
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        say "installing Debian packages: nodejs npm"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    for dir in "$PROJECT_DIR"/tests/npm/*/; do
        dir=${dir%/}
        name=$(basename "$dir")
        want=$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -c1-16)
        target="$cache/$name-$want"
        if [ ! -f "$target/node_modules/.pinfs-installed" ]; then
            say "installing the npm test server $name into $target (a few minutes, once)"
            rm -rf "$target.partial" && mkdir -p "$target.partial"
            cp "$dir/package.json" "$dir/package-lock.json" "$target.partial/"
            if ! (cd "$target.partial" &&
                npm install --omit=optional --no-audit --no-fund --loglevel=error --prefer-offline >/dev/null); then
                say "npm install failed for tests/npm/$name: the driver tests that need it cannot run"
                return 1
            fi
            touch "$target.partial/node_modules/.pinfs-installed"
            rm -rf "$target" && mv "$target.partial" "$target"
        fi
        link="$dir/node_modules"
        if [ "$(readlink "$link" 2>/dev/null)" != "$target/node_modules" ]; then
            rm -rf "$link" && ln -s "$target/node_modules" "$link"
        fi
    done
}
