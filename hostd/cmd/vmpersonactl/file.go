package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
)

func fileCommand() *command {
	return &command{
		name:    "file",
		summary: "copy files into and out of an instance's guest",
		long: `Copies a whole file into a guest (push) or out of it (pull) through the
guest agent, without a network or a shell in the guest. Admin only. A file
may be at most vmpersona-hostd's --max-file-size (default 64 MiB). A pushed
file appears at once and whole: the guest writes a temporary file beside
it, syncs it, gives it its mode and owner, then renames it over the
target; an interrupted push leaves the target as it was. Every transfer is
audited on the host with its path and size (types file_pushed and
file_pulled).`,
		example: `vmpersonactl file push vm1 ./app.conf /etc/app/app.conf --mode 0640 --owner root --group app
vmpersonactl file pull vm1 /var/log/app.log ./app.log
tar c dir | vmpersonactl file push vm1 - /tmp/dir.tar`,
		subs: []*command{filePushCommand(), filePullCommand()},
	}
}

func filePushCommand() *command {
	return &command{
		name: "push", args: "INSTANCE SRC DST", summary: "write a local file (or stdin) to a file of the guest",
		long: `Writes SRC (a local file, or - for stdin) to DST, an absolute path in the
guest. DST's directory must exist; DST, if it exists, must be a regular
file. Without --mode, --owner or --group the file keeps those of the file
it replaces (a new file: mode 0644, owned by the guest agent's user).`,
		example: `vmpersonactl file push vm1 ./motd /etc/motd
echo hello | vmpersonactl file push vm1 - /tmp/hello --mode 0600`,
		complete: []argKind{argInstance},
		setup: func(fs *flag.FlagSet) runner {
			mode := fs.String("mode", "", "octal permission mode of the file in the guest, e.g. 0644")
			owner := fs.String("owner", "", "owner (user name or number) of the file in the guest")
			group := fs.String("group", "", "group (name or number) of the file in the guest")
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 3, 3, "INSTANCE SRC DST"); err != nil {
					return err
				}
				if !filepath.IsAbs(args[2]) {
					return usageErrorf("DST %q must be an absolute path in the guest", args[2])
				}
				opt := apiclient.PushOptions{Mode: *mode, Owner: *owner, Group: *group, Size: -1}
				var src io.Reader = a.io.in
				if args[1] != "-" {
					f, err := os.Open(args[1])
					if err != nil {
						return err
					}
					defer f.Close()
					st, err := f.Stat()
					if err != nil {
						return err
					}
					if !st.Mode().IsRegular() {
						return fmt.Errorf("%s is not a regular file", args[1])
					}
					src, opt.Size = f, st.Size()
				}
				c, err := a.api()
				if err != nil {
					return err
				}
				res, err := c.PushFile(ctx, args[0], args[2], opt, src)
				if err != nil {
					return err
				}
				if a.json() {
					return writeJSON(a.io.out, res)
				}
				fmt.Fprintf(a.io.err, "%s: %d bytes written to %s on %s\n", progName, res.Size, res.Path, res.Instance)
				return nil
			}
		},
	}
}

func filePullCommand() *command {
	return &command{
		name: "pull", args: "INSTANCE SRC DST", summary: "copy a file of the guest to a local file (or stdout)",
		long: `Copies SRC, an absolute path of a regular file in the guest, to DST (a
local file, or - for stdout). DST is written beside itself and renamed
into place once the copy is whole; a failed pull leaves it untouched.`,
		example: `vmpersonactl file pull vm1 /etc/os-release -
vmpersonactl file pull vm1 /var/log/app.log ./app.log`,
		complete: []argKind{argInstance},
		setup: func(fs *flag.FlagSet) runner {
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 3, 3, "INSTANCE SRC DST"); err != nil {
					return err
				}
				if !filepath.IsAbs(args[1]) {
					return usageErrorf("SRC %q must be an absolute path in the guest", args[1])
				}
				c, err := a.api()
				if err != nil {
					return err
				}
				if args[2] == "-" {
					_, err := c.PullFile(ctx, args[0], args[1], a.io.rawOut)
					return err
				}
				tmp, err := os.CreateTemp(filepath.Dir(args[2]), "."+filepath.Base(args[2])+".pull-*")
				if err != nil {
					return err
				}
				n, err := c.PullFile(ctx, args[0], args[1], tmp)
				if err == nil {
					err = tmp.Sync()
				}
				if cerr := tmp.Close(); err == nil {
					err = cerr
				}
				if err == nil {
					err = os.Rename(tmp.Name(), args[2])
				}
				if err != nil {
					os.Remove(tmp.Name())
					return err
				}
				if !a.json() {
					fmt.Fprintf(a.io.err, "%s: %d bytes written to %s\n", progName, n, args[2])
				}
				return nil
			}
		},
	}
}
