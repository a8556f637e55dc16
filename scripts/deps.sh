#!/usr/bin/env bash
# Installs what Herald's build, tests and demo need when it is missing:
# Debian packages with apt-get and the npm packages of tests/npm from their lock file.
# Usage: scripts/deps.sh [test|demo|deb]
set -euo pipefail
what=${1:-test}
cd "$(dirname "$0")/.."

need=()
want() { # want COMMAND PACKAGE
	command -v "$1" >/dev/null 2>&1 || need+=("$2")
}
want gcc gcc
want dbus-daemon dbus-daemon
want dbus-send dbus-bin
want gdbus libglib2.0-bin
# make build links the system's SQLite, as the Debian package does.
[ -e /usr/include/sqlite3.h ] || need+=(libsqlite3-dev)
case "$what" in
test | demo)
	want dunst dunst
	want Xvfb xvfb
	want node nodejs
	want npm npm
	# Real sandboxes (new mount and pid namespaces) for the Flatpak identity tests.
	want bwrap bubblewrap
	# The real Debian Lomiri parts the Lomiri platform tests run on private buses.
	want gsettings libglib2.0-bin
	want dconf dconf-cli
	want /usr/libexec/dconf-service dconf-service
	want aa-exec apparmor
	want /usr/libexec/ayatana-indicator-messages/ayatana-indicator-messages-service ayatana-indicator-messages
	want /usr/libexec/hfd-service hfd-service
	for f in /usr/share/glib-2.0/schemas/com.lomiri.notifications.settings.gschema.xml:lomiri-schemas \
		/usr/share/sounds/lomiri/notifications/Xylo.ogg:lomiri-sounds; do
		[ -e "${f%%:*}" ] || need+=("${f##*:}")
	done
	if ! compgen -G '/usr/lib/*/lomiri-url-dispatcher/lomiri-url-dispatcher' >/dev/null; then
		need+=(lomiri-url-dispatcher)
	fi
	;;
esac
if [ "$what" = test ]; then
	# PostgreSQL's server binaries are not on PATH on Debian (/usr/lib/postgresql/N/bin).
	if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
		need+=(postgresql)
	fi
fi
case "$what" in
test | deb)
	want dpkg-buildpackage dpkg-dev
	want dh debhelper
	want lintian lintian
	want systemd-analyze systemd
	;;
esac

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing packages ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$what" = test ] && [ -f tests/npm/package-lock.json ]; then
	if [ ! -d tests/npm/node_modules ] || [ tests/npm/package-lock.json -nt tests/npm/node_modules ]; then
		echo "deps: npm ci in tests/npm" >&2
		(cd tests/npm && npm ci --no-audit --no-fund --silent)
	fi
fi
