#!/bin/sh
# A transforming helper: the text payload becomes a card and a message that
# also reports the environment and the modes of the two files.
p=$(cat "$1")
modes="$(stat -c %a "$1") $(stat -c %a "$2")"
printf '{"message":{"got":"%s","app":"%s","msg":"%s","modes":"%s"},"notification":{"tag":"t1","card":{"summary":"%s","body":"b","popup":true,"persist":true,"actions":["appid://x/y/current-user-version"]},"sound":true,"vibrate":{"pattern":[200,100]},"emblem-counter":{"count":3,"visible":true}}}' \
	"$p" "$HERALD_APP_ID" "$HERALD_MESSAGE_ID" "$modes" "$p" >"$2"
