#!/usr/bin/env bash
# System packages the project needs: a Java 17 runtime for TorchServe's frontend.
set -euo pipefail
if java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])'; then
    exit 0
fi
echo "installing OpenJDK 17 (TorchServe's frontend needs Java 17+)" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless
