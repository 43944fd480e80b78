#!/bin/sh
# Like the official nginx image (when the command is nginx): /etc/nginx/templates/*.template -> /etc/nginx/conf.d/* through envsubst
# (only variables set in the environment), and NGINX_ENTRYPOINT_LOCAL_RESOLVERS=1 exports
# NGINX_LOCAL_RESOLVERS, the nameservers of /etc/resolv.conf.
set -e
if [ -n "${NGINX_ENTRYPOINT_LOCAL_RESOLVERS:-}" ]; then
    NGINX_LOCAL_RESOLVERS="$(awk 'BEGIN{ORS=" "} $1=="nameserver" {if ($2 ~ ":") print "[" $2 "]"; else print $2}' /etc/resolv.conf)"
    NGINX_LOCAL_RESOLVERS="${NGINX_LOCAL_RESOLVERS% }"
    export NGINX_LOCAL_RESOLVERS
fi
if [ "${1:-}" = nginx ] && [ -d /etc/nginx/templates ]; then
    vars="$(env | cut -d= -f1 | sed 's/^/$/' | tr '\n' ' ')"
    for t in /etc/nginx/templates/*.template; do
        [ -e "$t" ] || continue
        out="/etc/nginx/conf.d/$(basename "$t" .template)"
        envsubst "$vars" <"$t" >"$out"
    done
fi
exec "$@"
