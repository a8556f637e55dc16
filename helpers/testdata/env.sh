#!/bin/sh
# Writes its environment (names and values, space-separated) as the message.
printf '{"message":"%s"}' "$(env | sort | tr '\n' ' ' | tr -d '"\\')" >"$2"
