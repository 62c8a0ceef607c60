#!/bin/sh
# The proxy's entry point in compose: renders its configuration, then runs nginx in the
# foreground. It does what the official image's template mechanism did (envsubst over
# templates/), with sed, so that the proxy starts the same on the official nginx image and on
# any other nginx image that reads /etc/nginx/conf.d/*.conf.
#   start.sh                  render into /etc/nginx/conf.d/default.conf, then exec nginx
#   start.sh TEMPLATE OUT     render only (tests/deploy/test_proxy.py)
# The body limit follows the API's IDCSCAN_MAX_UPLOAD_BYTES (the slide) plus the labels file
# (64 MiB) and 1 MiB of multipart framing and fields, so one setting governs both.
set -eu
template=${1:-$(dirname "$0")/templates/default.conf.template}
out=${2:-/etc/nginx/conf.d/default.conf}
max_body=$(( ${IDCSCAN_MAX_UPLOAD_BYTES:-4294967296} + 67108864 + 1048576 ))
upstream=${NGINX_API_UPSTREAM:?set NGINX_API_UPSTREAM to the API as host:port}
sed -e "s|[\$]{NGINX_MAX_BODY_BYTES}|$max_body|g" \
    -e "s|[\$]{NGINX_API_UPSTREAM}|$upstream|g" "$template" > "$out"
[ $# -ge 2 ] && exit 0
exec nginx -g 'daemon off;'
