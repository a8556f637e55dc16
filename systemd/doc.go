// Package systemd holds Herald's systemd unit files: heraldd.service, the
// user unit of the session daemon, and herald-server.service, the sandboxed
// system unit of the reference push server. The package has no Go API; its
// tests check the units with systemd-analyze and against the design.
package systemd
