#!/bin/sh
# Records its start and end in the log file named by the payload.
log=$(cat "$1")
echo "start $HERALD_APP_ID $HERALD_MESSAGE_ID" >>"$log"
sleep 0.03
echo "end $HERALD_APP_ID $HERALD_MESSAGE_ID" >>"$log"
printf '{"message":"%s"}' "$HERALD_MESSAGE_ID" >"$2"
