#!/bin/sh
# Hangs with a grandchild, both ignoring SIGTERM. The payload names the file
# (or FIFO) where "<own pid> <grandchild pid>" is written.
trap '' TERM
pidfile=$(cat "$1")
sleep 600 &
echo "$$ $!" >"$pidfile"
wait
