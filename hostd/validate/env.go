package validate

// EnvName checks one environment variable name (POSIX: [A-Za-z_][A-Za-z0-9_]*),
// as exec requests and personas use them.
func EnvName(name string) error {
	if e := checkEnvName("env", name); e != nil {
		return e
	}
	return nil
}
