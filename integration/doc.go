// Package integration is vmpersona's real-VM test tier: the tests (build tag
// "integration", run by `make integration`) boot TCG virtual machines under a
// real libvirtd from the guest image integration/image/build.sh makes, run
// the real vmpersona-guestd inside them on a real virtio-serial port, and
// drive the real vmpersona-hostd through its REST API and the real
// vmpersonactl binary.
//
//	make integration
//	go test -tags integration -count=1 -v -timeout 30m ./integration/...
//
// The tests need root (libvirt's system instance, QEMU running as root for
// the direct kernel boot from the user's cache). They start virtlogd and
// libvirtd when those are not running and stop exactly the daemons they
// started; every domain they define is named vmp-it-<pid>-<n> and is
// destroyed and undefined at the end, also when a test fails or the run is
// interrupted. Domains left by a run that was killed outright are removed by
// the next run.
//
// Environment knobs: VMP_IT_KEEP=1 keeps the run directory (console logs,
// hostd logs) after the run; VMP_IMAGE_ENV names the image.env to use
// instead of building the image.
package integration
