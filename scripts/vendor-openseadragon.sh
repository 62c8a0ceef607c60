#!/usr/bin/env bash
# Vendor OpenSeadragon (the viewer's deep zoom) into the package: the viewer loads nothing from a
# CDN, so the exact release it runs is committed under idcscan/api/static/openseadragon/ with its
# licence, and a wheel carries it.
#
#   scripts/vendor-openseadragon.sh [VERSION]
#
# Fetches the release from the npm registry with `npm pack` (npm checks the tarball against the
# registry's integrity hash), prints that hash, and replaces the vendored files with the
# minified build, its button images and LICENSE.txt. Run it to upgrade, then review the diff and
# commit it with the version in the message; VERSION.txt records what is vendored.
set -euo pipefail
version=${1:-6.1.1}
root=$(cd "$(dirname "$0")/.." && pwd)
target="$root/idcscan/api/static/openseadragon"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent --json "openseadragon@$version" >pack.json)
integrity=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["integrity"])' "$work/pack.json")
tar -xzf "$work/openseadragon-$version.tgz" -C "$work"
build="$work/package/build/openseadragon"
test -f "$build/openseadragon.min.js" || { echo "no build/openseadragon in openseadragon@$version" >&2; exit 1; }

rm -rf "$target"
mkdir -p "$target"
cp "$build/openseadragon.min.js" "$target/"
cp -r "$build/images" "$target/images"
cp "$work/package/LICENSE.txt" "$target/LICENSE.txt"
printf 'openseadragon %s from the npm registry (BSD-3-Clause)\nintegrity %s\n' \
  "$version" "$integrity" >"$target/VERSION.txt"
echo "vendored openseadragon $version ($integrity) into ${target#"$root"/}"
