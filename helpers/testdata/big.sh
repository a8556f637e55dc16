#!/bin/sh
# Writes 100 MiB of output.
head -c 104857600 /dev/zero >"$2"
