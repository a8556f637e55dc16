#!/usr/bin/env bash
# Installs Herald from a build directory, as `make install` does:
#   scripts/install.sh DESTDIR PREFIX BIN
# DESTDIR is prepended to every path (empty for the running system), PREFIX is
# usually /usr, BIN holds heraldd, herald and herald-server (make build).
# Configuration goes to /etc when PREFIX is /usr, else to PREFIX/etc; unit and
# D-Bus service files are rewritten to start the binaries under PREFIX.
# After installing on a running system: systemctl --user daemon-reload.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 3 ]; then
	echo "usage: $0 DESTDIR PREFIX BIN" >&2
	exit 2
fi
destdir=$1 prefix=$2 bin=$3
case $prefix in
/*) ;;
*)
	echo "install: PREFIX must be an absolute path, not $prefix" >&2
	exit 2
	;;
esac
if [ "$prefix" = /usr ]; then sysconfdir=/etc; else sysconfdir=$prefix/etc; fi

for b in heraldd herald herald-server; do
	if [ ! -x "$bin/$b" ]; then
		echo "install: $bin/$b missing: run make build first" >&2
		exit 1
	fi
done

# put MODE SRC DEST: install one file, rewriting /usr/bin/ to PREFIX/bin/.
put() {
	local mode=$1 src=$2 dest=$destdir$3
	mkdir -p "$(dirname "$dest")"
	sed "s|/usr/bin/|$prefix/bin/|g" "$src" >"$dest.tmp"
	chmod "$mode" "$dest.tmp"
	mv -f "$dest.tmp" "$dest"
	echo "install: $3"
}

for b in heraldd herald herald-server; do
	install -D -m 0755 "$bin/$b" "$destdir$prefix/bin/$b"
	echo "install: $prefix/bin/$b"
done
put 0644 systemd/heraldd.service "$prefix/lib/systemd/user/heraldd.service"
put 0644 systemd/herald-server.service "$prefix/lib/systemd/system/herald-server.service"
for f in data/dbus-1/services/*.service; do
	put 0644 "$f" "$prefix/share/dbus-1/services/$(basename "$f")"
done
for f in data/interfaces/*.xml; do
	[ -e "$f" ] || continue
	put 0644 "$f" "$prefix/share/dbus-1/interfaces/$(basename "$f")"
done
put 0644 data/config.toml "$sysconfdir/xdg/herald/config.toml"
put 0644 data/default/herald-server "$sysconfdir/default/herald-server"
for f in docs/man/*.1; do
	put 0644 "$f" "$prefix/share/man/man1/$(basename "$f")"
done
put 0755 data/examples/helper "$prefix/share/doc/herald/examples/helper"
put 0644 data/examples/com.example.hello_hello.json "$prefix/share/doc/herald/examples/com.example.hello_hello.json"
