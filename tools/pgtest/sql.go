// Reaching the server: its DSNs, and the SQL the harness runs as superuser.

package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

func (p *Postgres) setSuperuserPassword() error {
	secret, err := scramSecret(p.password)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return p.Exec(ctx, "ALTER ROLE postgres PASSWORD "+quoteLiteral(secret))
}

// Password returns the superuser's password, for tests that check it is
// redacted.
func (p *Postgres) Password() string { return p.password }

// SuperuserDSN returns a URL DSN for user postgres over TCP with its password
// and sslmode=disable; db "" means "postgres".
func (p *Postgres) SuperuserDSN(db string) string {
	return p.DSN("postgres", p.password, db)
}

// DSN returns a URL DSN to this server over TCP with sslmode=disable; db ""
// means "postgres", password "" leaves the password out.
func (p *Postgres) DSN(user, password, db string) string {
	if db == "" {
		db = "postgres"
	}
	return buildDSN(p.Host, p.Port, user, password, db)
}

func buildDSN(host string, port int, user, password, db string) string {
	u := url.URL{
		Scheme:   "postgres",
		Host:     fmt.Sprintf("%s:%d", host, port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	return u.String()
}

// localConfig is a superuser connection over the unix socket (trust).
func (p *Postgres) localConfig(db string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host = p.SocketDir
	cfg.Port = uint16(p.Port)
	cfg.User = "postgres"
	cfg.Password = ""
	cfg.Database = db
	cfg.TLSConfig = nil
	cfg.Fallbacks = nil
	// The harness's own short admin sessions (CreateRole, Exec) may still be closing when a
	// test samples pg_stat_activity. The exporter leaves out sessions whose application_name
	// starts with its own name (collector.ApplicationName; not imported: the collector's tests
	// import this package), so these never show up as a stray pool in a test's numbers.
	cfg.RuntimeParams = map[string]string{"application_name": "dbpool_exporter_pgtest"}
	return cfg, nil
}

// Exec runs sql (several statements are fine: it goes over the simple
// protocol) as the superuser in database postgres.
func (p *Postgres) Exec(ctx context.Context, sql string) error {
	cfg, err := p.localConfig("postgres")
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("pgtest: connect as superuser: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgtest: exec: %w", err)
	}
	return nil
}

// CreateRole creates a login role and grants it the given roles (e.g.
// "pg_monitor"). The password goes to the server as a SCRAM verifier, so
// the plain text shows up in no server log and in no pg_stat_activity.query.
// An empty password creates a role that can only log in over the socket.
func (p *Postgres) CreateRole(name, password string, superuser bool, grants ...string) error {
	var b strings.Builder
	b.WriteString("CREATE ROLE " + pgx.Identifier{name}.Sanitize() + " LOGIN")
	if superuser {
		b.WriteString(" SUPERUSER")
	}
	if password != "" {
		secret := password
		if isASCII(password) {
			s, err := scramSecret(password)
			if err != nil {
				return err
			}
			secret = s
		}
		// Non-ASCII passwords go as plain text so that the server applies
		// SASLprep itself.
		b.WriteString(" PASSWORD " + quoteLiteral(secret))
	}
	b.WriteString(";\n")
	for _, g := range grants {
		fmt.Fprintf(&b, "GRANT %s TO %s;\n", pgx.Identifier{g}.Sanitize(), pgx.Identifier{name}.Sanitize())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Exec(ctx, b.String()); err != nil {
		return fmt.Errorf("pgtest: create role %q: %w", name, err)
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings
// is on since PostgreSQL 9.1).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
