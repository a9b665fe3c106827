#!/usr/bin/env bash
# A data root holding only the first N groups of a grouped root (groups.csv order), as links.
# The default weights were trained when ../shared/data/faceswap had 8,000 groups; the 4,000 added
# later reshuffle the group split, so the default's own figures and calibration use the first 8,000:
#   scripts/first-groups.sh ../shared/data/faceswap 8000 build/faceswap-8000/faceswap
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 ROOT GROUPS OUT" >&2; exit 2; }
root=$(cd "$1" && pwd); groups=$2; out=$3
mkdir -p "$out"
awk -F, -v n="$groups" 'NR == 1 { print; next } { if (!($3 in seen)) { if (length(seen) >= n) exit; seen[$3] = 1 } print }' \
    "$root/groups.csv" > "$out/groups.csv"
tail -n +2 "$out/groups.csv" | cut -d, -f1 | while read -r path; do
    mkdir -p "$out/$(dirname "$path")"
    ln -sfn "$root/$path" "$out/$path"
done
echo "$out: $(($(wc -l < "$out/groups.csv") - 1)) images in $groups groups"
