#!/usr/bin/env bash
# System packages that `make serve` and `make test` need on a bare Debian or Ubuntu, each installed
# only when missing, and named before it is installed:
#   - the venv module of the chosen Python (Debian splits it out as pythonX.Y-venv),
#   - a Java 17+ runtime for TorchServe's frontend (Debian 12 / Ubuntu 22.04-24.04: 17; Debian 13: 21),
#   - libjpeg-turbo's TurboJPEG library (Debian's `libturbojpeg0`, Ubuntu's `libturbojpeg`): PyTurboJPEG
#     decodes JPEGs with it in half Pillow's time or less, same pixels (runtime/jpeg.py); without it
#     Pillow decodes, so it is skipped with a note where apt has neither,
#   - for the tests of the prediction records and the page: PostgreSQL's server (`postgresql`; the
#     tests start their own on a free port) and a headless browser (`chromium`, `chromium-driver`).
#     Where apt has no such package (Ubuntu ships Chromium as a snap) it is skipped with a note, and
#     those tests skip with the reason.
# Usage: scripts/install-system.sh [PYTHON]   (default python3)
set -euo pipefail
PYTHON=${1:-python3}

need_venv=0
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need_venv=1
need_java=0
java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])' || need_java=1
need_turbojpeg=0
compgen -G "/usr/lib/*/libturbojpeg.so.0" >/dev/null || compgen -G "/usr/lib/libturbojpeg.so.0" >/dev/null || need_turbojpeg=1
# the records and page tests: PostgreSQL and a headless browser
need_postgres=0
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_postgres=1
need_chromium=0
command -v chromium >/dev/null || need_chromium=1
need_driver=0
command -v chromedriver >/dev/null || need_driver=1
[ "$need_venv" -eq 0 ] && [ "$need_java" -eq 0 ] && [ "$need_turbojpeg" -eq 0 ] && [ "$need_postgres" -eq 0 ] && [ "$need_chromium" -eq 0 ] && [ "$need_driver" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
    [ "$need_venv" -eq 1 ] && echo "error: $PYTHON has no venv/ensurepip module; install it with your package manager" >&2
    [ "$need_java" -eq 1 ] && echo "error: TorchServe needs Java 17 or newer on PATH; install a JRE with your package manager" >&2
    [ "$need_venv" -eq 1 ] || [ "$need_java" -eq 1 ] && exit 1
    echo "install-system: no apt-get: without libturbojpeg JPEGs decode through Pillow (slower); without PostgreSQL / Chromium their tests skip" >&2
    exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
packages=()
if [ "$need_venv" -eq 1 ]; then
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    packages+=("python${version}-venv")
fi
if [ "$need_java" -eq 1 ]; then
    for jre in openjdk-17-jre-headless openjdk-21-jre-headless; do
        if apt-cache show "$jre" >/dev/null 2>&1; then packages+=("$jre"); break; fi
    done
fi
if [ "$need_turbojpeg" -eq 1 ]; then
    turbojpeg=""
    for lib in libturbojpeg0 libturbojpeg; do
        if apt-cache show "$lib" >/dev/null 2>&1; then turbojpeg=$lib; packages+=("$lib"); break; fi
    done
    [ -n "$turbojpeg" ] || echo "install-system: apt has no libturbojpeg here; JPEGs decode through Pillow (slower, same pixels)" >&2
fi
# the records and page tests: PostgreSQL and a headless browser
optional=()
[ "$need_postgres" -eq 1 ] && optional+=(postgresql)
[ "$need_chromium" -eq 1 ] && optional+=(chromium)
[ "$need_driver" -eq 1 ] && optional+=(chromium-driver)
for package in "${optional[@]}"; do
    if apt-cache show "$package" >/dev/null 2>&1; then packages+=("$package")
    else echo "install-system: $package is not in apt here; its tests will skip" >&2; fi
done
[ "${#packages[@]}" -eq 0 ] && exit 0
echo "install-system: installing ${packages[*]} (missing for make serve / make test)" >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"
