#!/usr/bin/env bash
# Builds the Debian packages (make deb), checks them with lintian (no errors
# allowed), installs both with dpkg -i, checks that every file the units and
# D-Bus service files refer to is in place, verifies the installed units with
# systemd-analyze, and removes the packages again. Needs root (dpkg -i).
# Usage: scripts/check-deb.sh [--no-build]   (--no-build: use dist/ as is)
set -euo pipefail
cd "$(dirname "$0")/.."

dist=${DIST:-dist}
step() { printf '==> %s\n' "$*"; }
fail() {
	printf 'check-deb: FAIL: %s\n' "$*" >&2
	exit 1
}

if [ "$(id -u)" -ne 0 ]; then
	fail "must run as root (dpkg -i, dpkg -r)"
fi
if [ "${1:-}" != --no-build ]; then
	step "make deb"
	make --no-print-directory deb DIST="$dist"
fi

version=$(dpkg-parsechangelog -SVersion)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
changes=$dist/herald_${version}_$arch.changes
debs=("$dist/herald_${version}_$arch.deb" "$dist/herald-server_${version}_$arch.deb")
for f in "$changes" "${debs[@]}"; do
	[ -f "$f" ] || fail "missing $f"
done

step "lintian $changes"
# Warnings and infos are printed; an error fails the check.
rc=0
out=$(lintian --fail-on error --info "$changes" 2>&1) || rc=$?
printf '%s\n' "$out" | grep -v 'running with root privileges' || true
[ "$rc" -eq 0 ] || fail "lintian reports errors (exit $rc)"

installed=()
cleanup() {
	if [ ${#installed[@]} -gt 0 ]; then
		step "dpkg -r ${installed[*]}"
		dpkg --purge "${installed[@]}" >/dev/null || true
	fi
}
trap cleanup EXIT

step "dpkg -i ${debs[*]}"
dpkg -i "${debs[@]}"
installed=(herald herald-server)

step "checking installed files"
want=(
	/usr/bin/heraldd
	/usr/bin/herald
	/usr/bin/herald-server
	/usr/lib/systemd/user/heraldd.service
	/lib/systemd/system/herald-server.service
	/etc/xdg/herald/config.toml
	/etc/default/herald-server
	/usr/share/dbus-1/services/com.lomiri.PushNotifications.service
	/usr/share/dbus-1/services/com.lomiri.Postal.service
	/usr/share/dbus-1/services/com.ubuntu.PushNotifications.service
	/usr/share/dbus-1/services/com.ubuntu.Postal.service
	/usr/share/dbus-1/services/org.unifiedpush.Distributor.herald.service
	/usr/share/dbus-1/services/org.herald.Daemon.service
	/usr/share/doc/herald/examples/helper
	/usr/share/doc/herald/examples/com.example.hello_hello.json
	/usr/share/click/hooks/push-helper.hook
	/usr/libexec/herald/click-hook-wrapper
)
for f in "${want[@]}"; do
	[ -e "$f" ] || fail "$f not installed"
done
for f in /usr/bin/heraldd /usr/bin/herald /usr/bin/herald-server; do
	[ -x "$f" ] || fail "$f is not executable"
done
for m in heraldd herald herald-server; do
	man -w "$m" >/dev/null 2>&1 || fail "no man page for $m"
done
ls /usr/share/dbus-1/interfaces/*.xml >/dev/null 2>&1 || fail "no D-Bus interface XML in /usr/share/dbus-1/interfaces"
# Herald replaces the Lomiri push service (issue 15): the relations, and a
# click hook whose Exec is the installed wrapper.
for rel in "Provides: lomiri-push-service" "Conflicts: lomiri-push-service, ubuntu-push-client" \
	"Replaces: lomiri-push-service, ubuntu-push-client"; do
	dpkg-deb -f "${debs[0]}" "${rel%%:*}" | grep -qx "${rel#*: }" || fail "herald.deb has no '$rel'"
done
hook_exec=$(sed -n 's/^Exec: //p' /usr/share/click/hooks/push-helper.hook)
[ -x "$hook_exec" ] || fail "push-helper.hook: Exec $hook_exec is not an installed executable"

# Every binary a unit or a D-Bus service file starts exists, and every
# SystemdService= names the installed user unit.
for unit in /usr/lib/systemd/user/heraldd.service /lib/systemd/system/herald-server.service; do
	exe=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
	[ -x "$exe" ] || fail "$unit: ExecStart $exe is not an installed executable"
done
for svc in /usr/share/dbus-1/services/*.service; do
	grep -q '^Exec=/usr/bin/heraldd$' "$svc" || continue
	name=$(sed -n 's/^Name=//p' "$svc")
	[ "$(basename "$svc" .service)" = "$name" ] || fail "$svc: Name=$name does not match the file name"
	unit=$(sed -n 's/^SystemdService=//p' "$svc")
	[ -e "/usr/lib/systemd/user/$unit" ] || fail "$svc: SystemdService=$unit is not installed"
done
# dh_installsystemduser enables the user unit for every user.
[ -L /etc/systemd/user/graphical-session.target.wants/heraldd.service ] ||
	fail "heraldd.service is not enabled for graphical-session.target"

step "systemd-analyze verify of the installed units"
rt=$(mktemp -d)
XDG_RUNTIME_DIR=$rt systemd-analyze --user verify /usr/lib/systemd/user/heraldd.service
systemd-analyze verify /lib/systemd/system/herald-server.service
rm -rf "$rt"
systemd-analyze security --offline=yes /lib/systemd/system/herald-server.service | tail -n 1

step "dpkg -r herald herald-server"
dpkg -r herald herald-server >/dev/null
installed=()
for f in /usr/bin/heraldd /usr/bin/herald /usr/bin/herald-server /usr/lib/systemd/user/heraldd.service \
	/lib/systemd/system/herald-server.service /usr/share/dbus-1/services/org.herald.Daemon.service; do
	[ ! -e "$f" ] || fail "$f left behind after dpkg -r"
done
dpkg --purge herald herald-server >/dev/null
step "check-deb: OK"
