#!/usr/bin/env bash
# Refresh the dashboard's third-party JavaScript (src/dashboard_api/web/static/vendor/) from the
# npm registry at the pinned versions below. Needs npm, for this target only: running or
# installing the service never needs Node. Run via `make vendor`; commit the result.
set -euo pipefail

PREACT=11.2.0
HTM=3.1.1
UPLOT=1.6.32

dest="$(cd "$(dirname "$0")/.." && pwd)/src/dashboard_api/web/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "preact@$PREACT" "htm@$HTM" "uplot@$UPLOT" >/dev/null
for pkg in "preact-$PREACT" "htm-$HTM" "uplot-$UPLOT"; do
  mkdir "$pkg" && tar xzf "$pkg.tgz" -C "$pkg"
done

rm -rf "$dest" && mkdir -p "$dest"
cp "preact-$PREACT/package/dist/preact.mjs" "$dest/preact.js"
# The hooks import the bare specifier "preact", which a browser resolves only through an
# import map (an inline script the page's CSP forbids): point it at the file beside it.
sed 's#from"preact"#from"./preact.js"#g' "preact-$PREACT/package/hooks/dist/hooks.mjs" >"$dest/hooks.js"
grep -q 'from"./preact.js"' "$dest/hooks.js" || { echo "hooks.js: import not rewritten" >&2; exit 1; }
cp "htm-$HTM/package/dist/htm.mjs" "$dest/htm.js"
# uPlot's minified build defines the global `uPlot` (a classic script, loaded with defer).
cp "uplot-$UPLOT/package/dist/uPlot.iife.min.js" "$dest/uPlot.iife.min.js"
cp "uplot-$UPLOT/package/dist/uPlot.min.css" "$dest/uPlot.min.css"
# Source maps are not shipped: drop the comments that point at them.
sed -i '/sourceMappingURL=/d' "$dest"/*.js
cp "preact-$PREACT/package/LICENSE" "$dest/LICENSE.preact.txt"
cp "htm-$HTM/package/LICENSE" "$dest/LICENSE.htm.txt"
cp "uplot-$UPLOT/package/LICENSE" "$dest/LICENSE.uplot.txt"
cat >"$dest/VERSIONS.txt" <<TXT
Vendored by scripts/vendor-web.sh (make vendor) from the npm registry:
preact $PREACT (MIT): dist/preact.mjs -> preact.js, hooks/dist/hooks.mjs -> hooks.js
htm $HTM (Apache-2.0): dist/htm.mjs -> htm.js
uplot $UPLOT (MIT): dist/uPlot.iife.min.js, dist/uPlot.min.css
TXT
(cd "$dest" && sha256sum -- *.js *.css >SHA256SUMS)
echo "vendored into $dest:"
ls -l "$dest"
