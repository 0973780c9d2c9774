package pgtest

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// scramIterations matches PostgreSQL's default scram_iterations.
const scramIterations = 4096

// scramSecret returns a SCRAM-SHA-256 verifier in the format PostgreSQL
// stores in pg_authid.rolpassword. Computing it here means the plain-text
// password never travels to the server, so it cannot end up in a server log
// line or in pg_stat_activity.query, which the exporter's tests inspect.
//
// PostgreSQL runs SASLprep over the password first; for ASCII passwords that
// is the identity, which is why callers only use this for ASCII passwords.
func scramSecret(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, scramIterations, sha256.Size)
	if err != nil {
		return "", err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s",
		scramIterations, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// isASCII reports whether SASLprep leaves s unchanged for certain: printable
// ASCII only.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// randomPassword returns 26 random base32 characters (A-Z, 2-7): URL-safe and
// conf-file-safe without quoting, so it cannot break a DSN or an auth_file.
func randomPassword() string {
	return rand.Text()
}
