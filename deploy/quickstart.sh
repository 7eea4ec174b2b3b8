#!/usr/bin/env bash
# Quick start on a fresh Debian/Ubuntu machine: install what busbell needs, then run
# `busbell demo` (or the busbell command given as arguments, e.g. `deploy/quickstart.sh tail`).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v python3 >/dev/null || need+=(python3 python3-venv)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# install-begin (tests/deploy/test_quickstart.py runs this block alone)
# (Re)install when the venv lacks busbell or its demo extras, or when pyproject.toml changed
# since the last install (new dependencies after a `git pull`): its hash is kept in .venv.
stamp=.venv/.busbell-pyproject.sha256
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x .venv/bin/busbell ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
    || ! .venv/bin/python -c 'import fastapi, bleak' 2>/dev/null; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[demo]'
    echo "$want" >"$stamp"
fi
# install-end

# Put `busbell` on the PATH so that every command the README and the demo print works as
# written: a symlink to .venv/bin/busbell in /usr/local/bin (root) or ~/.local/bin. An
# existing `busbell` there is replaced only when it is one of our links (to a checkout's
# .venv/bin/busbell, this one or another: the newest quickstart's checkout wins, and the
# link it replaced is named); any other file or link is left alone.
# link-begin
link_busbell() {
    local dir=$1 target old
    target="$(pwd)/.venv/bin/busbell"
    mkdir -p "$dir" 2>/dev/null || return 1
    [ -w "$dir" ] || return 1
    if [ -L "$dir/busbell" ]; then
        old="$(readlink "$dir/busbell")"
        case "$old" in
            "$target") return 0 ;;
            */.venv/bin/busbell) echo "quickstart: $dir/busbell pointed at $old; now this checkout's" >&2 ;;
            *)
                echo "quickstart: $dir/busbell is a link to $old, not to a busbell checkout; leaving it" >&2
                return 1
                ;;
        esac
    elif [ -e "$dir/busbell" ]; then
        echo "quickstart: $dir/busbell exists and is not a link; leaving it" >&2
        return 1
    fi
    ln -sfn "$target" "$dir/busbell"
    echo "quickstart: busbell -> $target (in $dir)" >&2
}
# link-end
if [ "$(id -u)" -eq 0 ]; then
    link_busbell /usr/local/bin || true
else
    link_busbell "$HOME/.local/bin" || true
    case ":$PATH:" in
        *":$HOME/.local/bin:"*) ;;
        *) echo "quickstart: add ~/.local/bin to your PATH (Debian's ~/.profile does so at the next login), or run .venv/bin/busbell" >&2 ;;
    esac
fi
if [ $# -eq 0 ]; then
    exec .venv/bin/busbell demo
fi
exec .venv/bin/busbell "$@"
