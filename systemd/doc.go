// Package systemd holds vmpersona's systemd units and udev rule:
//
//	vmpersona-hostd.service   the host daemon (Type=notify, watchdog, hardened)
//	vmpersona-hostd.socket    its API socket /run/vmpersona/hostd.sock (group vmpersona)
//	vmpersona-guestd.service  the guest agent, bound to its virtio-serial port
//	60-vmpersona-guestd.rules starts the agent when the port appears
//
// The files are installed by the Debian packages (packaging/build-deb.sh).
// The package's tests run systemd-analyze verify on every unit and check the
// host daemon's security exposure.
package systemd
