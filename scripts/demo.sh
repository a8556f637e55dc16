#!/usr/bin/env bash
# Runs Herald's whole lifecycle once, on this machine, with nothing else
# running and nothing left behind (make demo):
#   a private session bus, herald-server on a free port with its sqlite
#   database, heraldd on that bus, Xvfb + dunst when installed, a demo app
#   with a helper that registers over D-Bus, `herald send` of a Web Push to
#   its endpoint, the Post signal, the notification card, and PopAll.
# Usage: scripts/demo.sh [BIN]   (BIN holds heraldd, herald, herald-server)
# Every wait is bounded; the script exits non-zero naming the failed step.
set -euo pipefail
exec </dev/null

bin=$(cd "${1:-bin}" && pwd)
app=com.example.hello_hello
pkg_path=com_2eexample_2ehello # libnih-quoted package of $app
timeout_s=${DEMO_TIMEOUT:-20}  # seconds for each wait

n=0
current="start"
step() {
	n=$((n + 1))
	current="$*"
	printf '\n[%d] %s\n' "$n" "$*"
}
info() { printf '    %s\n' "$*"; }
indent() { sed 's/^/    | /'; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/herald-demo.XXXXXX")
pids=()  # started processes, stopped in reverse order
names=() # their names, for messages
ok=0

cleanup() {
	local rc=$?
	set +e
	if [ "$ok" -ne 1 ]; then
		printf '\ndemo: FAILED at step %d: %s\n' "$n" "$current" >&2
		for log in "$tmp"/*.log; do
			[ -s "$log" ] || continue
			printf -- '--- last lines of %s\n' "$(basename "$log")" >&2
			tail -n 25 "$log" >&2
		done
	fi
	local i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null
	done
	# Give every process up to 10 s to finish its clean shutdown.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		local t=0
		while kill -0 "${pids[i]}" 2>/dev/null && [ $t -lt 100 ]; do
			sleep 0.1
			t=$((t + 1))
		done
		kill -KILL "${pids[i]}" 2>/dev/null
		wait "${pids[i]}" 2>/dev/null
	done
	rm -rf "$tmp"
	if [ "$ok" -eq 1 ]; then
		printf '\ndemo: OK, everything stopped\n'
		exit 0
	fi
	[ "$rc" -ne 0 ] || rc=1
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
	printf 'demo: %s\n' "$*" >&2
	exit 1
}

# wait_for DESCRIPTION COMMAND...: runs COMMAND until it succeeds, at most
# $timeout_s seconds.
wait_for() {
	local what=$1
	shift
	local deadline=$((SECONDS + timeout_s))
	until "$@" >/dev/null 2>&1; do
		local i
		for i in "${!pids[@]}"; do
			kill -0 "${pids[i]}" 2>/dev/null || fail "${names[i]} exited while waiting for $what"
		done
		if [ $SECONDS -ge $deadline ]; then
			fail "timed out after ${timeout_s}s waiting for $what"
		fi
		sleep 0.1
	done
}

need() {
	command -v "$1" >/dev/null 2>&1 || fail "$1 not found: run scripts/deps.sh demo (it installs $2)"
}

step "checking the binaries and tools"
for b in heraldd herald herald-server; do
	[ -x "$bin/$b" ] || fail "$bin/$b missing: run make build"
done
need dbus-daemon dbus-daemon
need dbus-monitor dbus-bin
need gdbus libglib2.0-bin
show=0
if command -v Xvfb >/dev/null 2>&1 && command -v dunst >/dev/null 2>&1; then
	show=1
	info "Xvfb and dunst found: the notification will be shown on a virtual screen"
else
	info "Xvfb or dunst missing: the card is printed but not shown (scripts/deps.sh demo installs them)"
fi
info "working directory $tmp"

# A private home: nothing of the user's session, configuration or state is used.
export HOME=$tmp/home
export XDG_CONFIG_HOME=$HOME/.config XDG_DATA_HOME=$HOME/.local/share
export XDG_STATE_HOME=$HOME/.local/state XDG_CACHE_HOME=$HOME/.cache
export XDG_RUNTIME_DIR=$tmp/runtime XDG_CONFIG_DIRS=$tmp/etc/xdg XDG_DATA_DIRS=$tmp/share
unset DISPLAY WAYLAND_DISPLAY NOTIFY_SOCKET DBUS_SESSION_BUS_ADDRESS
mkdir -p "$XDG_CONFIG_HOME" "$XDG_DATA_HOME" "$XDG_STATE_HOME" "$XDG_CACHE_HOME" "$XDG_CONFIG_DIRS" "$XDG_DATA_DIRS"
mkdir -m 0700 "$XDG_RUNTIME_DIR"

step "starting a private session bus"
cat >"$tmp/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$XDG_RUNTIME_DIR/bus</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
dbus-daemon --config-file="$tmp/bus.conf" --nofork --print-address=3 3>"$tmp/bus.address" 2>"$tmp/dbus-daemon.log" &
pids+=($!)
names+=(dbus-daemon)
wait_for "the bus address" test -s "$tmp/bus.address"
DBUS_SESSION_BUS_ADDRESS=$(head -n 1 "$tmp/bus.address")
export DBUS_SESSION_BUS_ADDRESS
info "bus $DBUS_SESSION_BUS_ADDRESS"

has_owner() { # has_owner NAME: the name is owned on the bus
	gdbus call --session --timeout 5 --dest org.freedesktop.DBus --object-path /org/freedesktop/DBus \
		--method org.freedesktop.DBus.NameHasOwner "$1" | grep -q true
}

if [ "$show" -eq 1 ]; then
	step "starting Xvfb and dunst (the notification server)"
	Xvfb -displayfd 3 -nolisten tcp -screen 0 1024x768x24 3>"$tmp/display" >"$tmp/xvfb.log" 2>&1 &
	pids+=($!)
	names+=(Xvfb)
	wait_for "Xvfb to report its display" test -s "$tmp/display"
	export DISPLAY=:$(head -n 1 "$tmp/display")
	info "display $DISPLAY"
	mkdir -p "$XDG_CONFIG_HOME/dunst"
	printf '[global]\n    font = Monospace 10\n' >"$XDG_CONFIG_HOME/dunst/dunstrc"
	dunst >"$tmp/dunst.log" 2>&1 &
	pids+=($!)
	names+=(dunst)
	wait_for "dunst to own org.freedesktop.Notifications" has_owner org.freedesktop.Notifications
	info "dunst owns org.freedesktop.Notifications"
fi

step "starting herald-server on a free port"
mkdir -p "$tmp/server"
"$bin/herald-server" --listen 127.0.0.1:0 --db "$tmp/server/herald-server.db" >"$tmp/server.out" 2>"$tmp/herald-server.log" &
pids+=($!)
names+=(herald-server)
wait_for "herald-server to print its address" grep -q '^listening on ' "$tmp/server.out"
addr=$(sed -n 's/^listening on //p' "$tmp/server.out" | head -n 1)
info "herald-server listening on $addr, database $tmp/server/herald-server.db"
wait_for "GET /healthz" bash -c "exec 3<>/dev/tcp/${addr%:*}/${addr##*:} && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && head -n 1 <&3 | grep -q ' 200'"
info "GET /healthz: 200"

step "installing the demo app's helper ($app)"
helpers=$XDG_DATA_HOME/herald/helpers
mkdir -p "$helpers/hello"
cp data/examples/helper "$helpers/hello/helper"
# The demo wraps the example helper to keep a copy of the card it made.
cat >"$helpers/hello/demo-helper" <<EOF
#!/bin/sh
"$helpers/hello/helper" "\$1" "\$2" || exit
cp "\$2" "$tmp/card.json"
EOF
chmod +x "$helpers/hello/helper" "$helpers/hello/demo-helper"
printf '{"exec": "hello/demo-helper", "app_id": "%s"}\n' "$app" >"$helpers/$app.json"
info "manifest $helpers/$app.json"
indent <"$helpers/$app.json"

step "starting heraldd"
"$bin/heraldd" --server "ws://$addr/" --state-dir "$XDG_STATE_HOME/herald" --log-level info 2>"$tmp/heraldd.log" &
pids+=($!)
names+=(heraldd)
for name in org.herald.Daemon com.lomiri.PushNotifications com.lomiri.Postal org.unifiedpush.Distributor.herald; do
	wait_for "heraldd to own $name" has_owner "$name"
	info "heraldd owns $name"
done

# The app listens for the Post signal, as a Lomiri app does.
dbus-monitor --session "type='signal',interface='com.lomiri.Postal',member='Post'" >"$tmp/monitor.out" 2>"$tmp/dbus-monitor.log" &
pids+=($!)
names+=(dbus-monitor)
wait_for "dbus-monitor to start" grep -q 'NameAcquired\|NameLost\|member=' "$tmp/monitor.out"

step "the app registers over D-Bus (com.lomiri.PushNotifications.Register)"
reply=$(gdbus call --session --timeout "$timeout_s" --dest com.lomiri.PushNotifications \
	--object-path "/com/lomiri/PushNotifications/$pkg_path" \
	--method com.lomiri.PushNotifications.Register "$app") || fail "Register failed: $reply"
token=$(printf '%s' "$reply" | sed -n "s/^('\(.*\)',)\$/\1/p")
[ -n "$token" ] || fail "Register returned no token: $reply"
endpoint=http://$addr/wpush/v1/$token
info "token received (${#token} characters)"
info "endpoint $endpoint"

step "herald status"
timeout "$timeout_s" "$bin/herald" status 2>&1 | indent || fail "herald status failed"

step "an app server posts a Web Push (herald send)"
payload='{"title":"Hello from Herald","body":"Your first push message went all the way through."}'
info "payload $payload"
timeout "$timeout_s" "$bin/herald" send "$endpoint" "$payload" 2>&1 | indent || fail "herald send failed"

step "waiting for the Post signal"
wait_for "the Post signal for $app" grep -q "string \"$app\"" "$tmp/monitor.out"
grep -A1 'member=Post' "$tmp/monitor.out" | head -n 2 | indent

step "the card the helper made"
wait_for "the helper's card" test -s "$tmp/card.json"
indent <"$tmp/card.json"

if [ "$show" -eq 1 ]; then
	step "the notification on the screen (dunst)"
	shown() { [ "$(dunstctl count displayed)" -ge 1 ] || [ "$(dunstctl count waiting)" -ge 1 ]; }
	wait_for "dunst to show the notification" shown
	info "dunst: $(dunstctl count displayed) displayed, $(dunstctl count waiting) waiting"
	# dunst lists a notification in its history once it is closed.
	dunstctl close-all
	wait_for "the notification in dunst's history" bash -c "dunstctl history | grep -q 'Hello from Herald'"
	info "dunstctl history:"
	dunstctl history | awk '
		/"(appname|summary|body)" *:/ { k = $1; gsub(/[":]/, "", k) }
		k != "" && /"data" *:/ { sub(/^[^:]*: */, ""); printf "%-8s %s\n", k ":", $0; k = "" }' | indent
fi

step "herald inbox $app"
timeout "$timeout_s" "$bin/herald" inbox "$app" 2>&1 | indent || fail "herald inbox failed"

step "the app reads its messages (com.lomiri.Postal.PopAll)"
msgs=$(gdbus call --session --timeout "$timeout_s" --dest com.lomiri.Postal \
	--object-path "/com/lomiri/Postal/$pkg_path" \
	--method com.lomiri.Postal.PopAll "$app") || fail "PopAll failed: $msgs"
printf '%s\n' "$msgs" | indent
case $msgs in
*"Hello from Herald"*) ;;
*) fail "PopAll did not return the message" ;;
esac
again=$(gdbus call --session --timeout "$timeout_s" --dest com.lomiri.Postal \
	--object-path "/com/lomiri/Postal/$pkg_path" --method com.lomiri.Postal.PopAll "$app")
case $again in
*"Hello from Herald"*) fail "PopAll returned the message twice: $again" ;;
esac
info "PopAll again: $again (the queue is empty)"

step "stopping everything"
ok=1
