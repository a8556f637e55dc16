#!/bin/sh
# Writes invalid JSON.
printf '{"message":' >"$2"
