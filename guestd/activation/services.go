package activation

import (
	"context"

	"github.com/vmpersona/vmpersona/guestd/sysenv"
)

// applyServices gives services started from now on v's variables (package
// sysenv; secret ones excepted) and returns the undo.
func (m *Manager) applyServices(ctx context.Context, v *View) (undo func(), err error) {
	if m.cfg.Services == nil {
		return func() {}, nil
	}
	return m.cfg.Services.Apply(ctx, sysenv.Vars(v.Active))
}
