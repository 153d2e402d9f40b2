package activation

import "testing"

func TestSecretName(t *testing.T) {
	for name, secret := range map[string]bool{
		"DB_PASSWORD": true, "api_token": true, "CLIENT_SECRET": true, "SSH_KEY": true, "KEYRING": true,
		"APP_ENV": false, "PATH": false, "MONKEY_BUSINESS": true, "PASS": false,
	} {
		if got := SecretName(name); got != secret {
			t.Errorf("SecretName(%q) = %v, want %v", name, got, secret)
		}
	}
}
