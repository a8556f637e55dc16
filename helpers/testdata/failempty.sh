#!/bin/sh
# Writes no output and exits non-zero.
echo "something broke" >&2
exit 3
