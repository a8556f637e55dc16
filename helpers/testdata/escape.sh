#!/bin/sh
# Starts a process that leaves the helper's process group and session
# (setsid), writes its pid to the file named by the payload, and exits.
pidfile=$(cat "$1")
setsid sh -c 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec sleep 300' "$pidfile" </dev/null >/dev/null 2>&1 &
while [ ! -s "$pidfile" ]; do sleep 0.01; done
printf '{"message":"left a child"}' >"$2"
