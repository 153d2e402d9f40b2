// Package debian is the full-stack proof of vmpersona's Debian packages
// (build tag "integration_full", run by `make integration-full`, root):
//
//   - a Debian 12 guest made by debootstrap (minbase, systemd-sysv, udev, the
//     Debian kernel; cached by rootfs.sh), vmpersona-guestd.deb installed in
//     it with dpkg in a chroot, turned into an ext4 disk with mke2fs -d and
//     booted under libvirt (TCG, direct kernel boot with the image's own
//     kernel and initrd, systemd as PID 1, the agent channel). udev and
//     systemd start the agent by themselves; the real vmpersona-hostd, with
//     libvirt discovery on qemu:///system and a default persona defined
//     before the VM starts, activates it; the persona's environment reaches
//     a login shell; it is still active after the VM reboots. The guest
//     also gets vmpersona-hostd.deb (apt in the chroot), so the host units
//     run under a real systemd: socket activation, Type=notify, watchdog;
//
//   - vmpersona-hostd.deb installed with apt into a Debian 12 chroot, its
//     binaries run there, and remove/purge behave.
//
//     make integration-full
//     VMP_DEB_DIR=dist VMP_BIN_DIR=bin go test -tags integration_full -count=1 -v -timeout 40m ./integration/debian/...
//
// libvirtd and virtlogd are started by hand when not running, and only
// those are stopped afterwards, by PID. Every domain is named
// vmp-full-<pid>-<n> and is destroyed and undefined at the end. VMP_FULL_KEEP=1
// keeps the run directory (console log, hostd log).
package debian
