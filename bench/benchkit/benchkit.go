// Package benchkit is tooling, not product: what the benchmarks under bench/ share. It opens
// the application sessions of a level (a realistic mix of states), starts the exporters under
// measurement as child processes, times scrapes and the bare activity query, reads a
// process's CPU time and memory from /proc, and prints tables.
package benchkit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

// AppName starts with the exporter's own application_name, so that ActivityQuery leaves the
// benchmarks' monitoring sessions out exactly as it leaves out the exporter's: the bare query
// and the scrape then read the same rows.
const AppName = collector.ApplicationName + "_bench"

// CallerDBEnv are the variables of the caller's environment that could change what a child
// process connects to; the children do not get them.
var CallerDBEnv = []string{"PG", "DB_", "DATA_SOURCE_NAME=", "DATABASE_URL="}

// Say prints a progress line on stderr.
func Say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// Connect opens one pgx connection with the given application_name.
func Connect(ctx context.Context, dsn, appName string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = appName
	return pgx.ConnectConfig(ctx, cfg)
}

// RandomPassword returns 32 hex digits.
func RandomPassword() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// Exporter is one exporter process under measurement.
type Exporter struct {
	Label string
	// URL is its metrics URL.
	URL string
	*childproc.Process
}

// ExporterSpec says how to start an exporter.
type ExporterSpec struct {
	Label string
	Path  string
	// Args returns the command line for a listen host and port.
	Args func(host string, port int) []string
	// Env is added to the caller's environment without CallerDBEnv.
	Env []string
	// ReadyPath is fetched until it answers 200 (e.g. "/-/healthy").
	ReadyPath string
}

// StartExporter starts an exporter on a free loopback port with its log lines tagged on
// stderr, and waits until it is ready.
func StartExporter(ctx context.Context, s ExporterSpec) (*Exporter, error) {
	port, err := pgtest.FreePort()
	if err != nil {
		return nil, err
	}
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	p, err := childproc.Start(childproc.Spec{
		Name: "exporter (" + s.Label + ")",
		Path: s.Path,
		Args: s.Args("127.0.0.1", port),
		Env:  append(childproc.Environ(CallerDBEnv...), s.Env...),
		Tee:  &PrefixWriter{Prefix: "exporter[" + s.Label + "]: ", W: os.Stderr},
	})
	if err != nil {
		return nil, err
	}
	e := &Exporter{Label: s.Label, URL: base + "/metrics", Process: p}
	if err := p.WaitReady(ctx, 15*time.Second, 50*time.Millisecond, childproc.HTTPReady(base+s.ReadyPath)); err != nil {
		e.Stop()
		return nil, err
	}
	return e, nil
}

// Stop stops the exporter with SIGTERM.
func (e *Exporter) Stop() { _ = e.Process.Stop(syscall.SIGTERM, 10*time.Second) }

// PrefixWriter tags each line of a child's log.
type PrefixWriter struct {
	Prefix string
	W      io.Writer
	mu     sync.Mutex
	buf    []byte
}

func (p *PrefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		fmt.Fprintf(p.W, "%s%s\n", p.Prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
}

// ScrapeOnce times one GET of url until the whole body is read, as Prometheus sees it.
func ScrapeOnce(ctx context.Context, client *http.Client, url string) (time.Duration, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err != nil {
		return 0, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return d, body, nil
}

// BareQuery runs ActivityQuery the way the exporter does (pgx, its default prepared-statement
// cache) and reads every row.
func BareQuery(ctx context.Context, conn *pgx.Conn) (time.Duration, error) {
	start := time.Now()
	rows, err := conn.Query(ctx, collector.ActivityQuery)
	if err != nil {
		return 0, err
	}
	for rows.Next() {
		if _, err := rows.Values(); err != nil {
			rows.Close()
			return 0, err
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// ParseLevels parses --backends: comma-separated positive numbers in increasing order
// (sessions are added between levels, never closed).
func ParseLevels(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("levels must increase: %d after %d", n, out[len(out)-1])
		}
		out = append(out, n)
	}
	return out, nil
}

// Run runs a benchmark until it ends or Ctrl-C/SIGTERM cancels its context, and returns the
// exit status: 0, 1 on an error (printed after "name: "), 130 when interrupted. The benchmark
// stops everything it started before it returns.
func Run(name string, bench func(ctx context.Context) error) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(os.Stderr, "%s: interrupted; what it started is gone\n", name)
			return 130
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}

// Flags are the command-line flags every benchmark has.
type Flags struct {
	Exporter        string
	Backends        []int
	Scrapes, Warmup int
	levels          string
}

// Register adds --exporter, --backends (default levels), --scrapes and --warmup to app.
func (f *Flags) Register(app *kingpin.Application, levels, backendsHelp string) {
	app.Flag("exporter", "Path to the dbpool_exporter binary.").Default("./dbpool_exporter").StringVar(&f.Exporter)
	app.Flag("backends", "Comma-separated numbers of application sessions, in increasing order."+backendsHelp).Default(levels).StringVar(&f.levels)
	app.Flag("scrapes", "Measured scrapes per exporter and level.").Default("100").IntVar(&f.Scrapes)
	app.Flag("warmup", "Unmeasured scrapes (and queries) per exporter and level.").Default("10").IntVar(&f.Warmup)
}

// Validate parses --backends, checks the numbers and makes --exporter an absolute path to
// an existing file, after app.Parse.
func (f *Flags) Validate() error {
	abs, err := filepath.Abs(f.Exporter)
	if err != nil {
		return err
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("exporter binary: %w (run make build)", err)
	}
	f.Exporter = abs
	if f.Backends, err = ParseLevels(f.levels); err != nil {
		return fmt.Errorf("--backends: %w", err)
	}
	if f.Scrapes < 1 || f.Warmup < 0 {
		return errors.New("--scrapes must be at least 1, --warmup at least 0")
	}
	return nil
}

// Main parses the command line of app (which has f registered), validates f and then check
// (may be nil), and runs bench under Run. A bad command line exits 2.
func Main(app *kingpin.Application, f *Flags, check func() error, bench func(ctx context.Context) error) int {
	kingpin.MustParse(app.Parse(os.Args[1:]))
	err := f.Validate()
	if err == nil && check != nil {
		err = check()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", app.Name, err)
		return 2
	}
	return Run(app.Name, bench)
}

// AtLeast is a check for Main: the flag's value *v must be at least min.
func AtLeast(flag string, v *int, min int) func() error {
	return func() error {
		if *v < min {
			return fmt.Errorf("%s must be at least %d", flag, min)
		}
		return nil
	}
}

// Stop closes c (e.g. the throwaway PostgreSQL) at the end of a benchmark, saying so, and
// keeps its error in *err unless there already is one: defer benchkit.Stop(&err, ...).
func Stop(err *error, what string, c io.Closer) {
	Say("stopping %s", what)
	if cerr := c.Close(); cerr != nil && *err == nil {
		*err = cerr
	}
}
