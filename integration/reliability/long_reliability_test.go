//go:build reliability

package reliability

import "time"

// The long runs of `make reliability`: the full sizes of the brief. Each can
// still be changed through its RELIABILITY_* variable.
func init() {
	loadGuests, loadClients, loadDuration = 50, 100, 60*time.Second
	longRun = true
}
