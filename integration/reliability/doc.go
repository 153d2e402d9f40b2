// Package reliability holds vmpersona's fault, hostile-input, bypass, load
// and resource-bound suites. Everything runs the real binaries
// (vmpersona-hostd, vmpersona-guestd, built in TestMain) on unix sockets in
// temporary directories; there is nothing to import here, only tests.
//
//	hostd_crash_test.go   kill -9 of hostd under persona writes and guest audit ingestion
//	guestd_crash_test.go  kill -9 of guestd during activations: old or new persona, env and routing agree
//	transport_test.go     a fault proxy: cuts, garbage, partial and torn frames; audit exactly once
//	hostile_input_test.go malformed, mistyped, oversized and malicious REST input; slowloris
//	auth_test.go          every route × tokens and unix peers (root, nobody); refusals audited
//	bypass_test.go        ways around a restriction; allowlist mode
//	load_test.go          concurrent clients × real guests: no 5xx, no lost audit event, p50/p99
//	bounds_test.go        hostile guests flooding hostd; the guest's own limits
//	harden_test.go        anonymous floods, forged and flooding guest audit, hostile handshakes and exec answers
//	diskfull_test.go      hostd on a small tmpfs and ext4 that fill up: 507, recovery, nothing lost
//
// `go test ./integration/reliability` runs short versions (part of make
// test); with -tags reliability (make reliability) they run at full size.
// RELIABILITY_CRASH_LOOPS, RELIABILITY_GUEST_TRIALS,
// RELIABILITY_FAULT_DURATION, RELIABILITY_FLOOD, RELIABILITY_LOAD_GUESTS,
// RELIABILITY_LOAD_CLIENTS, RELIABILITY_LOAD_DURATION and
// RELIABILITY_SLOWLORIS=0 resize or skip them. The REST API fuzzers are in
// hostd/api/fuzz_api_test.go.
package reliability
