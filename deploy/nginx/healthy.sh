#!/bin/sh
# The proxy's health check (docker-compose.yml): nginx accepts connections on its TLS port
# (default 8443). With whatever the image has: busybox nc (the official alpine image), else
# bash's /dev/tcp (Debian-based nginx images, such as the stand-in of the engine script). That
# the API behind it works is the api service's own check, which the proxy waits for.
port=${1:-8443}
if command -v nc >/dev/null 2>&1; then
  exec nc -z -w 3 127.0.0.1 "$port"
fi
exec bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
