#!/bin/sh
# Writes valid output but exits non-zero.
printf '{"message":"ok"}' >"$2"
echo "something broke" >&2
exit 3
