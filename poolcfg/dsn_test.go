package poolcfg

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// isolatePGEnv keeps libpq environment variables and ~/.pgpass of the machine running the
// tests out of pgconn.ParseConfig.
func isolatePGEnv(t testing.TB) {
	for _, k := range []string{"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE",
		"PGSSLMODE", "PGAPPNAME", "PGTARGETSESSIONATTRS", "PGSSLPASSWORD", "PGOPTIONS"} {
		t.Setenv(k, "")
	}
	t.Setenv("PGPASSFILE", filepath.Join(t.TempDir(), "no-pgpass"))
}

func TestDSNRedaction(t *testing.T) {
	isolatePGEnv(t)
	tests := []struct {
		name, in, want string
		secrets        []string // must not appear in String()
	}{
		{"url", "postgres://app:s3cretpw@db:5432/appdb?sslmode=disable",
			"postgres://app:xxxxx@db:5432/appdb?sslmode=disable", []string{"s3cretpw"}},
		{"postgresql scheme", "postgresql://app:s3cretpw@db/appdb",
			"postgresql://app:xxxxx@db/appdb", []string{"s3cretpw"}},
		{"url without password", "postgres://app@db:5432/appdb", "postgres://app@db:5432/appdb", nil},
		{"url with empty password", "postgres://app:@db/appdb", "postgres://app:@db/appdb", nil},
		{"url with blank password", "postgres://app:   @db/appdb?password=%20%20", "postgres://app:   @db/appdb?password=xxxxx", nil},
		{"url without user", "postgres://db/appdb?sslmode=disable", "postgres://db/appdb?sslmode=disable", nil},
		{"password in query", "postgres://db/appdb?user=app&password=s3cretpw&sslmode=disable",
			"postgres://db/appdb?user=app&password=xxxxx&sslmode=disable", []string{"s3cretpw"}},
		{"password in userinfo and query", "postgres://app:first-pw@db/appdb?password=second-pw",
			"postgres://app:xxxxx@db/appdb?password=xxxxx", []string{"first-pw", "second-pw"}},
		{"percent-encoded password", "postgres://app:p%40ss%2Fw%3Ard%20x@db/appdb",
			"postgres://app:xxxxx@db/appdb", []string{"p%40ss", "p@ss/w:rd x", "w%3Ard"}},
		{"percent-encoded query key", "postgres://db/appdb?pass%77ord=s3cretpw",
			"postgres://db/appdb?pass%77ord=xxxxx", []string{"s3cretpw"}},
		{"sslpassword in query", "postgres://app@db/appdb?sslpassword=keypass1",
			"postgres://app@db/appdb?sslpassword=xxxxx", []string{"keypass1"}},
		{"ipv6 and several hosts", "postgres://app:s3cretpw@[::1]:5432,db2:5433/appdb",
			"postgres://app:xxxxx@[::1]:5432,db2:5433/appdb", []string{"s3cretpw"}},
		{"key=value", "host=db port=5432 user=app password=s3cretpw dbname=appdb sslmode=disable",
			"host=db port=5432 user=app password=xxxxx dbname=appdb sslmode=disable", []string{"s3cretpw"}},
		{"key=value quoted with spaces", "host=db password='s3 cret pw' dbname=appdb",
			"host=db password='xxxxx' dbname=appdb", []string{"s3 cret pw", "cret"}},
		{"key=value quoted with escaped quote", `host=db password='it\'s secret' dbname=appdb`,
			`host=db password='xxxxx' dbname=appdb`, []string{"it\\'s", "secret"}},
		{"key=value escaped space", `host=db password=s3\ cretpw dbname=appdb`,
			`host=db password=xxxxx dbname=appdb`, []string{"cretpw"}},
		{"key=value spaces around =", "host = db password = s3cretpw", "host = db password = xxxxx", []string{"s3cretpw"}},
		{"key=value repeated password", "password=first-pw host=db password=second-pw",
			"password=xxxxx host=db password=xxxxx", []string{"first-pw", "second-pw"}},
		{"key=value sslpassword", "host=db user=app sslpassword=keypass1", "host=db user=app sslpassword=xxxxx", []string{"keypass1"}},
		{"key=value without password", "host=db user=app dbname=appdb", "host=db user=app dbname=appdb", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := ParseDSN(tt.in)
			if err != nil {
				t.Fatalf("ParseDSN: %v", err)
			}
			if got := d.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			if d.ConnString() != tt.in {
				t.Errorf("ConnString() = %q, want the input", d.ConnString())
			}
			for _, out := range printed(t, d) {
				for _, s := range tt.secrets {
					if strings.Contains(out, s) {
						t.Errorf("printed DSN %q contains secret %q", out, s)
					}
				}
			}
		})
	}
}

// printed renders d in every way a program might print or log it.
func printed(t *testing.T, d DSN) []string {
	t.Helper()
	type holder struct {
		Target Target
		hidden DSN // unexported: fmt prints it by reflection, without calling its methods
	}
	h := holder{Target{Name: "main", DSN: d}, d}
	outs := []string{d.String()}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%10.3v"} {
		outs = append(outs, fmt.Sprintf(verb, d), fmt.Sprintf(verb, &d), fmt.Sprintf(verb, h), fmt.Sprintf(verb, &h))
	}
	js, err := json.Marshal(h.Target)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "dsn", d, "target", h.Target)
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "dsn", d, "target", h.Target, "holder", h)
	return append(outs, string(js), buf.String())
}

func TestDSNPrinting(t *testing.T) {
	isolatePGEnv(t)
	d, err := ParseDSN("postgres://app:s3cretpw@db:5432/appdb")
	if err != nil {
		t.Fatal(err)
	}
	const red = "postgres://app:xxxxx@db:5432/appdb"
	for _, tt := range []struct{ format, want string }{
		{"%v", red},
		{"%+v", red},
		{"%s", red},
		{"%q", `"` + red + `"`},
		{"%#v", `poolcfg.DSN("` + red + `")`},
		{"%+v", red},
	} {
		if got := fmt.Sprintf(tt.format, d); got != tt.want {
			t.Errorf("Sprintf(%q) = %q, want %q", tt.format, got, tt.want)
		}
	}
	if got := fmt.Sprintf("%+v", Target{Name: "main", DSN: d}); got != "{Name:main DSN:"+red+" AuthModule:}" {
		t.Errorf("Target %%+v = %q", got)
	}
	js, _ := json.Marshal(Target{Name: "main", DSN: d})
	if string(js) != `{"Name":"main","DSN":"`+red+`","AuthModule":""}` {
		t.Errorf("json = %s", js)
	}
}

func TestDSNAccessors(t *testing.T) {
	isolatePGEnv(t)
	var zero DSN
	if !zero.IsZero() || zero.String() != "" || zero.ConnString() != "" || fmt.Sprint(zero) != "" {
		t.Errorf("zero DSN: IsZero=%v String=%q ConnString=%q", zero.IsZero(), zero.String(), zero.ConnString())
	}
	for _, tt := range []struct{ in, name string }{
		{"postgres://app:pw@db.example.com:6543/appdb", "db.example.com:6543/appdb"},
		{"postgresql://app@db/appdb", "db:5432/appdb"},
		{"host=db port=5433 user=app password=pw dbname=appdb", "db:5433/appdb"},
		{"postgres://app:pw@[::1]:5432/appdb", "[::1]:5432/appdb"},
		{"postgres://app:pw@h1:5432,h2:5433/appdb", "h1:5432/appdb"},
		{"host=/tmp port=5432 dbname=appdb user=app", "/tmp:5432/appdb"},
	} {
		d, err := ParseDSN(tt.in)
		if err != nil {
			t.Fatalf("ParseDSN(%q): %v", tt.in, err)
		}
		if d.IsZero() || d.DefaultName() != tt.name {
			t.Errorf("ParseDSN(%q): IsZero=%v DefaultName=%q, want %q", tt.in, d.IsZero(), d.DefaultName(), tt.name)
		}
	}
}

func TestParseDSNErrors(t *testing.T) {
	isolatePGEnv(t)
	tests := []struct {
		name, in string
		want     string   // in the error
		secrets  []string // never in the error
	}{
		{"empty", "", "empty DSN", nil},
		{"blank", "  \t", "empty DSN", nil},
		{"bad port", "postgres://app:Sup3rSecr3t@db:notaport/appdb", "invalid DSN (URL form)", []string{"Sup3rSecr3t"}},
		{"unencoded slash in password", "postgres://app:Sup3r/Secr3t@db/appdb", "percent-encode", []string{"Sup3r", "Secr3t"}},
		{"unencoded @ in password", "postgres://app:Sup3r@Secr3t@db/appdb", "percent-encode", []string{"Sup3r", "Secr3t"}},
		{"space in password", "postgres://app:Sup3r Secr3t@db/appdb", "invalid DSN (URL form)", []string{"Sup3r", "Secr3t"}},
		{"bad escape in password", "postgres://app:Sup3r%zzSecr3t@db/appdb", "invalid DSN (URL form)", []string{"Sup3r", "Secr3t"}},
		{"two colons and @", "postgres://a@app:Sup3r:Secr3t@db/appdb", "invalid DSN (URL form)", []string{"Sup3r", "Secr3t"}},
		{"unencoded & in query password", "postgres://db/appdb?password=Sup3r&Secr3t", "invalid DSN (URL form)", []string{"Sup3r", "Secr3t"}},
		{"unquoted space in key=value", "host=db password=Sup3r Secr3t", "quote values", []string{"Sup3r", "Secr3t"}},
		{"unterminated quote", "host=db password='Sup3rSecr3t", "invalid DSN (key=value form)", []string{"Sup3r", "Secr3t"}},
		{"no = at all", "Sup3rSecr3t", "invalid DSN (key=value form)", nil},
		// Where the structure is clear, pgconn's reason is kept: pgconn is asked about the DSN
		// with its password field masked, so its reason cannot contain the password.
		{"bad sslmode url", "postgres://app:Sup3rSecr3t@db/appdb?sslmode=bogus", "sslmode is invalid", []string{"Sup3rSecr3t"}},
		{"bad sslmode key=value", "host=db password=Sup3rSecr3t sslmode=bogus", "sslmode is invalid", []string{"Sup3rSecr3t"}},
		{"bad value beside the password", "postgres://app:Sup3rSecr3t@db/appdb?target_session_attrs=bogus",
			"invalid DSN (URL form): unknown target_session_attrs value: bogus", []string{"Sup3rSecr3t"}},
		// A value is not masked because it happens to equal the password: it is not the
		// password field, and masking it would be masking by substring.
		{"value equal to the password", "host=db user=monitor password=monitor target_session_attrs=monitor",
			"invalid DSN (key=value form): unknown target_session_attrs value: monitor", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseDSN(tt.in)
			if err == nil {
				t.Fatal("ParseDSN succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			for _, s := range tt.secrets {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q contains secret %q", err, s)
				}
			}
		})
	}
}

// TestDSNEncryptedClientKey: pgconn decrypts the client key with sslpassword while parsing,
// so the redaction self-check must not feed it the mask.
func TestDSNEncryptedClientKey(t *testing.T) {
	isolatePGEnv(t)
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// pgconn reads only the legacy PEM encryption (RFC 1423).
	block, err := x509.EncryptPEMBlock(rand.Reader, "EC PRIVATE KEY", keyDER, []byte("KeyPassphrase1"), x509.PEMCipherAES256) //nolint:staticcheck // see above
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	in := fmt.Sprintf("host=db sslmode=require sslcert='%s' sslkey='%s' sslpassword=KeyPassphrase1 password=S3cretPw", certFile, keyFile)
	d, err := ParseDSN(in)
	if err != nil {
		t.Fatalf("ParseDSN: %v", err)
	}
	want := fmt.Sprintf("host=db sslmode=require sslcert='%s' sslkey='%s' sslpassword=xxxxx password=xxxxx", certFile, keyFile)
	if d.String() != want {
		t.Errorf("String() = %q, want %q", d.String(), want)
	}
	if _, err := ParseDSN(strings.Replace(in, "KeyPassphrase1", "WrongPassphrase", 1)); err == nil ||
		!strings.Contains(err.Error(), "unable to decrypt key") || strings.Contains(err.Error(), "Passphrase") {
		t.Errorf("wrong passphrase: %v", err)
	}
}
