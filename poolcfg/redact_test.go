package poolcfg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// Passwords that substring masking gets wrong: parts of the user name, host, database, other
// parameters and error words, URL and quoting syntax, one character. Redaction by structure
// replaces the password field and leaves every other byte as written.
func TestRedactionShapes(t *testing.T) {
	isolatePGEnv(t)
	tests := []struct {
		name, in, want string
		app            bool // an app endpoint URL, else a DSN
	}{
		{"password in the user name", "postgres://dbpool_monitor:monitor@db:5432/app",
			"postgres://dbpool_monitor:xxxxx@db:5432/app", false},
		{"password in the host", "postgres://monitor:example@db.example.com/app",
			"postgres://monitor:xxxxx@db.example.com/app", false},
		{"password is the host", "host=127.0.0.1 port=5432 user=monitor password=127.0.0.1 dbname=app",
			"host=127.0.0.1 port=5432 user=monitor password=xxxxx dbname=app", false},
		{"password in the database", "postgres://monitor:app@db/appdb?sslmode=disable",
			"postgres://monitor:xxxxx@db/appdb?sslmode=disable", false},
		{"password in another parameter", "host=db user=monitor password=disable sslmode=disable",
			"host=db user=monitor password=xxxxx sslmode=disable", false},
		{"password is a key", "host=db user=monitor password=password dbname=app",
			"host=db user=monitor password=xxxxx dbname=app", false},
		{"error words", "postgres://monitor:connection%20refused@db/app",
			"postgres://monitor:xxxxx@db/app", false},
		{"one character", "postgres://o:o@db.o/o?application_name=o",
			"postgres://o:xxxxx@db.o/o?application_name=o", false},
		{"one character key=value", "host=a user=a password=a dbname=a", "host=a user=a password=xxxxx dbname=a", false},
		{"empty password URL", "postgres://monitor:@db/app", "postgres://monitor:@db/app", false},
		{"empty password key=value", "host=db user=monitor password='' dbname=app", "host=db user=monitor password='' dbname=app", false},
		{"URL syntax, escaped", "postgres://monitor:p%40ss%3Aw%2Frd%3F%23%25%27%20x@db/app",
			"postgres://monitor:xxxxx@db/app", false},
		{"URL syntax in a query password", "postgres://db/app?user=monitor&password=p%40ss%3Aw%2Frd%3F%23%25%27%20x",
			"postgres://db/app?user=monitor&password=xxxxx", false},
		{"URL syntax, key=value quoted", `host=db user=monitor password='p@ss:w/rd?#%\' x' dbname=app`,
			`host=db user=monitor password='xxxxx' dbname=app`, false},
		{"URL syntax, key=value escaped", `host=db user=monitor password=p@ss:w/rd?#%\'\ x dbname=app`,
			`host=db user=monitor password=xxxxx dbname=app`, false},
		// Unescaped syntax makes the password's place unsure: refused, the parts unquoted.
		{"unescaped @ in the user info", "postgres://monitor:Qu4rk@Zebr4@db/app", "", false},
		{"unescaped / in the user info", "postgres://monitor:Qu4rk/Zebr4@db/app", "", false},
		{"unescaped space", "postgres://monitor:Qu4rk Zebr4@db/app", "", false},
		{"unquoted space", "host=db user=monitor password=Qu4rk Zebr4", "", false},

		{"app: password in the user name", "http://scraper:scrape@127.0.0.1:9931/dbpool",
			"http://scraper:xxxxx@127.0.0.1:9931/dbpool", true},
		{"app: password in the path", "https://api:dbpool@h:1/dbpool?pool=dbpool",
			"https://api:xxxxx@h:1/dbpool?pool=dbpool", true},
		{"app: one character", "http://a:a@a/a", "http://a:xxxxx@a/a", true},
		{"app: written as is around it", "http://Scraper:pw@[::1]:9931/a%2Fb/?x=1&y=%41",
			"http://Scraper:xxxxx@[::1]:9931/a%2Fb/?x=1&y=%41", true},
		{"app: unescaped @ in the password", "http://scraper:p@ss@h:1/", "http://scraper:xxxxx@h:1/", true},
		{"app: escaped syntax", "http://scraper:p%2Fs%3Fs%23w%25%27%20x@h:1/", "http://scraper:xxxxx@h:1/", true},
		{"app: empty password", "http://scraper:@h:1/", "http://scraper:@h:1/", true},
		{"app: no password", "http://scraper@h:1/", "http://scraper@h:1/", true},
		{"app: unescaped /", "http://scraper:Qu4rk/Zebr4@h:1/", "", true},
		{"app: unescaped ?", "http://scraper:1234?5678@h:1/", "", true},
		{"app: unescaped #", "http://scraper:1234#5678@h:1/", "", true},
		{"app: unescaped space", "http://scraper:Qu4rk Zebr4@h:1/", "", true},
		{"app: unescaped %", "http://scraper:Qu4rk%Zebr4@h:1/", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var shown string
			var err error
			if tt.app {
				var u AppURL
				u, err = ParseAppURL(tt.in)
				shown = u.String()
			} else {
				var d DSN
				d, err = ParseDSN(tt.in)
				shown = d.String()
			}
			switch {
			case tt.want == "" && err == nil:
				t.Fatalf("accepted %q as %q: its password cannot be told apart", tt.in, shown)
			case tt.want == "":
				for _, piece := range []string{"Qu4rk", "Zebr4", "1234", "5678"} {
					if strings.Contains(err.Error(), piece) {
						t.Errorf("error %q shows %q of the password", err, piece)
					}
				}
			case err != nil:
				t.Fatalf("rejected: %v", err)
			case shown != tt.want:
				t.Errorf("shown as %q, want %q", shown, tt.want)
			}
		})
	}
}

func TestRedactError(t *testing.T) {
	isolatePGEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr, addr2 := testbin.FreeAddr(t), testbin.FreeAddr(t) // nothing listens there
	host, port, _ := net.SplitHostPort(addr)
	_, port2, _ := net.SplitHostPort(addr2)
	refused := func(a string) string {
		return a + " (127.0.0.1): dial error: dial tcp " + a + ": connect: connection refused"
	}
	connect := func(dsn string) error {
		_, err := pgconn.Connect(ctx, dsn)
		if err == nil {
			t.Fatalf("connected to %s", addr)
		}
		return err
	}
	// The case: the password is part of the user name and of the error words.
	connErr := connect("postgres://dbpool_monitor:monitor@" + addr + "/app?sslmode=disable")
	twoHosts := connect(fmt.Sprintf("host=%s,%s port=%s,%s user=dbpool_refused password=refused dbname=app sslmode=disable", host, host, port, port2))
	_, poolErr := pgxpool.ParseConfig("postgres://monitor:Sup3rSecr3t@db/app?pool_max_conns=many")
	_, urlParseErr := pgconn.ParseConfig("postgres://monitor:Sup3r%zzSecr3t@db:5432/app")
	_, httpErr := http.Get("http://scraper:refused@" + addr + "/dbpool")
	plain := errors.New(`FATAL: password authentication failed for user "monitor" (SQLSTATE 28P01)`)

	tests := []struct {
		name    string
		err     error
		want    string
		secrets []string
	}{
		{"connect error", connErr,
			"failed to connect to user=dbpool_monitor database=app: " + refused(addr), nil},
		{"wrapped", fmt.Errorf("monitoring connection: %w", connErr),
			"monitoring connection: failed to connect to user=dbpool_monitor database=app: " + refused(addr), nil},
		{"wrapped twice", fmt.Errorf("probe login: %w", fmt.Errorf("attempt: %w", connErr)),
			"probe login: attempt: failed to connect to user=dbpool_monitor database=app: " + refused(addr), nil},
		{"several hosts, on one line", twoHosts,
			"failed to connect to user=dbpool_refused database=app: " + refused(addr) + "; " + refused(addr2), nil},
		{"pgxpool parse error", poolErr,
			`invalid DSN (URL form): cannot parse pool_max_conns (strconv.ParseInt: parsing "many": invalid syntax)`, []string{"Sup3rSecr3t"}},
		{"unparsable URL", urlParseErr,
			"invalid DSN (URL form); " + withheld + " (percent-encode @ / ? # & : and spaces in the user name and password)", []string{"Sup3r", "Secr3t"}},
		{"http client", httpErr,
			`Get "http://scraper:xxxxx@` + addr + `/dbpool": dial tcp ` + addr + ": connect: connection refused", nil},
		{"postgres URL in a url.Error", &url.Error{Op: "parse", URL: "postgres://monitor:monitor@db/app", Err: errors.New("boom")},
			`parse "postgres://monitor:xxxxx@db/app": boom`, nil},
		{"key=value DSN in a url.Error", &url.Error{Op: "parse", URL: "host=db user=#1 password=Sup3r://Secr3t", Err: errors.New("boom")},
			"parse: URL and " + withheld, []string{"Sup3r", "Secr3t"}},
		{"URL without a password", &url.Error{Op: "Get", URL: "http://h:1/dbpool", Err: errors.New("EOF")},
			`Get "http://h:1/dbpool": EOF`, nil},
		{"not a connection error: untouched", plain, plain.Error(), nil},
		{"printed twice by a wrapper: withheld", fmt.Errorf("%w (again: %v)", poolErr, poolErr),
			"connection error (" + withheld + ")", []string{"Sup3rSecr3t"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RedactError(tt.err)
			if got.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
			for _, s := range tt.secrets {
				if strings.Contains(got.Error(), s) {
					t.Errorf("%q contains %q", got, s)
				}
			}
			if !errors.Is(got, tt.err) || RedactError(got) != got {
				t.Errorf("RedactError hides the original error or is not idempotent")
			}
		})
	}
	var ce *pgconn.ConnectError
	if !errors.As(RedactError(connErr), &ce) || !errors.Is(RedactError(fmt.Errorf("x: %w", context.DeadlineExceeded)), context.DeadlineExceeded) {
		t.Errorf("errors.As or errors.Is does not see through RedactError")
	}
	if RedactError(nil) != nil {
		t.Errorf("RedactError(nil) is not nil")
	}
	if got := RedactError(&pgconn.ConnectError{}).Error(); got != "failed to connect" {
		t.Errorf("ConnectError without a Config: %q", got)
	}
	// Before: substring masking gave "failed to connect to `user=dbpool_xxxxx database=app`: ...".
	if got := connErr.Error(); !strings.Contains(got, "`user=dbpool_monitor database=app`") || !strings.HasSuffix(got, "refused") {
		t.Errorf("pgconn's own text changed, revisit RedactError: %s", got)
	}
}
