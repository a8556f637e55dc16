#!/bin/sh
# Writes the directory of its input file as the message.
printf '{"message":"%s"}' "$(dirname "$1")" >"$2"
