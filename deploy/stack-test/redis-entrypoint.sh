#!/bin/sh
# Like the official redis image: no protected mode (the server is reached over the compose network).
set -e
if [ "$1" = "redis-server" ]; then
    shift
    exec redis-server --protected-mode no "$@"
fi
exec "$@"
