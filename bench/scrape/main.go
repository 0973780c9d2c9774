// Command scrape benchmarks one dbpool_exporter scrape against the bare activity query.
//
// It starts a throwaway PostgreSQL, opens 10, 500 and 2,000 application sessions in a
// realistic mix of states, and for each level times sequential scrapes of /metrics from two
// exporter processes (the default, whose login probe runs beside the activity query, and one
// with --no-collector.probe) next to collector.ActivityQuery run alone, once through pgx and
// once through pgbench. It prints the figures; it asserts nothing. bench/run.sh runs it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/dbpool/dbpool_exporter/collector"
	"github.com/dbpool/dbpool_exporter/tools/pgtest"
)

const (
	monitorRole = "bench_monitor"
	appRole     = "bench_app"
	// benchAppName starts with the exporter's own application_name, so ActivityQuery leaves
	// the benchmark's monitoring sessions out exactly as it leaves out the exporter's: the
	// bare query and the scrape then read the same rows.
	benchAppName = collector.ApplicationName + "_bench"
	// dialers bounds concurrent logins: SCRAM costs CPU on both sides and the postmaster
	// forks one backend per login.
	dialers = 16
	// appNames are spread round-robin over the sessions: api-N match the configured pool
	// (10 instances), worker-N fall into the exporter's per-application groups.
	appNamesPerKind = 10
)

type options struct {
	exporter string
	backends []int
	scrapes  int
	warmup   int
	queries  int
}

func main() { os.Exit(run()) }

func run() int {
	var o options
	var levels string
	app := kingpin.New("scrape", "Benchmarks dbpool_exporter's scrape against the bare pg_stat_activity query on a throwaway PostgreSQL.")
	app.Flag("exporter", "Path to the dbpool_exporter binary.").Default("./dbpool_exporter").StringVar(&o.exporter)
	app.Flag("backends", "Comma-separated numbers of application sessions, in increasing order.").Default("10,500,2000").StringVar(&levels)
	app.Flag("scrapes", "Measured scrapes per exporter and level.").Default("100").IntVar(&o.scrapes)
	app.Flag("warmup", "Unmeasured scrapes and queries per exporter and level.").Default("10").IntVar(&o.warmup)
	app.Flag("queries", "Measured bare queries (pgx, and pgbench transactions) per level.").Default("100").IntVar(&o.queries)
	kingpin.MustParse(app.Parse(os.Args[1:]))
	var err error
	if o.backends, err = parseLevels(levels); err != nil {
		fmt.Fprintln(os.Stderr, "scrape: --backends:", err)
		return 2
	}
	if o.scrapes < 1 || o.queries < 1 || o.warmup < 0 {
		fmt.Fprintln(os.Stderr, "scrape: --scrapes and --queries must be at least 1, --warmup at least 0")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, o); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "scrape: interrupted; sessions, exporters and PostgreSQL are gone")
			return 130
		}
		fmt.Fprintln(os.Stderr, "scrape:", err)
		return 1
	}
	return 0
}

func parseLevels(s string) ([]int, error) {
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

// levelResult is everything measured at one number of backends.
type levelResult struct {
	backends   int
	bare       []time.Duration
	pgbenchAvg time.Duration
	exporters  []exporterResult
}

type exporterResult struct {
	label        string
	scrapes      []time.Duration
	activityJob  []time.Duration // the exporter's own dbpool_scrape_duration_seconds{collector="activity"}
	probeJob     []time.Duration
	probeFailed  int
	seen         int // sum of dbpool_server_connections in the last scrape
	seriesAll    int
	seriesDbpool int
	rssKiB       int
	hwmKiB       int
}

func bench(ctx context.Context, o options) (err error) {
	began := time.Now()
	exporterBin, err := filepath.Abs(o.exporter)
	if err != nil {
		return err
	}
	if _, err := os.Stat(exporterBin); err != nil {
		return fmt.Errorf("exporter binary: %w (run make build)", err)
	}
	work, err := os.MkdirTemp("", "dbpool-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	maxLevel := o.backends[len(o.backends)-1]
	say("starting a throwaway PostgreSQL (max_connections %d)", maxLevel+300)
	pg, err := pgtest.Start(pgtest.Options{MaxConnections: maxLevel + 300})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping PostgreSQL")
		if cerr := pg.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	monitorPW, appPW := randomPassword(), randomPassword()
	if err := pg.CreateRole(monitorRole, monitorPW, false, "pg_monitor"); err != nil {
		return err
	}
	if err := pg.CreateRole(appRole, appPW, false); err != nil {
		return err
	}
	// Lock waiters queue on this table behind one session that holds it.
	if err := pg.Exec(ctx, "CREATE TABLE bench_lock (id int); GRANT ALL ON bench_lock TO "+appRole); err != nil {
		return err
	}

	monitor, err := connect(ctx, pg.DSN(monitorRole, monitorPW, ""), benchAppName)
	if err != nil {
		return fmt.Errorf("monitoring connection: %w", err)
	}
	defer monitor.Close(context.Background())
	var serverVersion string
	if err := monitor.QueryRow(ctx, "SHOW server_version").Scan(&serverVersion); err != nil {
		return err
	}
	printHost(serverVersion)

	appCfg, err := pgx.ParseConfig(pg.DSN(appRole, appPW, ""))
	if err != nil {
		return err
	}
	sessions := newSessionSet(appCfg)
	defer func() {
		say("cancelling background queries and closing %d sessions", sessions.len())
		sessions.close(pg)
	}()

	monitorDSN := pg.DSN(monitorRole, monitorPW, "")
	common := []string{
		"--pool.application-name-regex=api-(?P<instance>[0-9]+)",
		"--pool.instances=10",
		"--log.level=warn",
	}
	variants := []struct{ label, flag string }{
		{"probe on (default)", ""},
		{"probe off", "--no-collector.probe"},
	}
	var exporters []*exporterProc
	defer func() {
		for _, e := range exporters {
			e.stop()
		}
	}()
	for _, v := range variants {
		args := slices.Clone(common)
		if v.flag != "" {
			args = append(args, v.flag)
		}
		e, err := startExporter(ctx, exporterBin, v.label, monitorDSN, args)
		if err != nil {
			return err
		}
		exporters = append(exporters, e)
	}

	script := filepath.Join(work, "activity.sql")
	if err := os.WriteFile(script, []byte(collector.ActivityQuery+";\n"), 0o644); err != nil {
		return err
	}
	pgb := pgbench{
		bin:    filepath.Join(pg.BinDir, "pgbench"),
		script: script,
		host:   pg.Host, port: pg.Port,
		user: monitorRole, password: monitorPW,
	}

	client := &http.Client{Timeout: 30 * time.Second}
	var results []levelResult
	for _, n := range o.backends {
		want := mixFor(n)
		say("opening sessions up to %d backends: %s", n, want)
		start := time.Now()
		if err := sessions.grow(ctx, want); err != nil {
			return err
		}
		if err := waitForMix(ctx, monitor, want); err != nil {
			return err
		}
		say("  %d sessions ready in %.1fs; measuring", n, time.Since(start).Seconds())
		r, err := measure(ctx, o, n, client, exporters, monitor, pgb)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	printResults(o, results)
	fmt.Printf("\nmeasured in %.0fs; load average at the end %s\n", time.Since(began).Seconds(), loadAvg())
	return nil
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func printHost(serverVersion string) {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	fmt.Printf("host: %d CPUs (%s), PostgreSQL %s, %s, load average %s\n", runtime.NumCPU(), cpu, serverVersion, runtime.Version(), loadAvg())
}

// loadAvg is the 1-minute load average: figures taken on a busy machine are noisy.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// connect opens one pgx connection with the given application_name.
func connect(ctx context.Context, dsn, appName string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = appName
	return pgx.ConnectConfig(ctx, cfg)
}

// measure interleaves the two exporters' scrapes and the bare query round by round, so that
// background noise hits all three alike; pgbench runs afterwards as its own process.
func measure(ctx context.Context, o options, n int, client *http.Client, exporters []*exporterProc, monitor *pgx.Conn, pgb pgbench) (levelResult, error) {
	r := levelResult{backends: n, exporters: make([]exporterResult, len(exporters))}
	for i, e := range exporters {
		r.exporters[i].label = e.label
	}
	for round := -o.warmup; round < max(o.scrapes, o.queries); round++ {
		measured := round >= 0
		for i, e := range exporters {
			if round >= o.scrapes {
				break
			}
			d, body, err := scrapeOnce(ctx, client, e.url)
			if err != nil {
				return r, fmt.Errorf("%s: %w", e.label, err)
			}
			s, err := parseScrape(body)
			if err != nil {
				return r, fmt.Errorf("%s: %w", e.label, err)
			}
			if !measured {
				continue
			}
			er := &r.exporters[i]
			er.scrapes = append(er.scrapes, d)
			er.activityJob = append(er.activityJob, s.activityJob)
			if s.hasProbe {
				er.probeJob = append(er.probeJob, s.probeJob)
				if !s.probeOK {
					er.probeFailed++
				}
			}
			er.seen, er.seriesAll, er.seriesDbpool = s.seen, s.seriesAll, s.seriesDbpool
		}
		if round < o.queries {
			d, err := bareQuery(ctx, monitor)
			if err != nil {
				return r, fmt.Errorf("bare query: %w", err)
			}
			if measured {
				r.bare = append(r.bare, d)
			}
		}
	}
	for i, e := range exporters {
		r.exporters[i].rssKiB, r.exporters[i].hwmKiB = procMemory(e.pid())
		if r.exporters[i].seen != n {
			say("  note: %s counted %d client backends, expected %d", e.label, r.exporters[i].seen, n)
		}
	}
	avg, err := pgb.run(ctx, o.queries)
	if err != nil {
		return r, err
	}
	r.pgbenchAvg = avg
	return r, nil
}

// scrapeOnce times one GET of /metrics until the whole body is read, as Prometheus sees it.
func scrapeOnce(ctx context.Context, client *http.Client, url string) (time.Duration, []byte, error) {
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
		return 0, nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return d, body, nil
}

// bareQuery runs ActivityQuery the way the exporter does (pgx, its default prepared-statement
// cache) and reads every row.
func bareQuery(ctx context.Context, conn *pgx.Conn) (time.Duration, error) {
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

// scrapeFacts are what one exposition says about itself.
type scrapeFacts struct {
	seriesAll, seriesDbpool int
	activityJob, probeJob   time.Duration
	hasProbe, probeOK       bool
	seen                    int
}

// parseScrape counts series and reads the exporter's self-reported figures. A scrape whose
// activity sample failed is an error: timing failed scrapes would flatter the exporter.
func parseScrape(body []byte) (scrapeFacts, error) {
	var f scrapeFacts
	up, activityOK := false, false
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f.seriesAll++
		if !strings.HasPrefix(line, "dbpool_") {
			continue
		}
		f.seriesDbpool++
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name, labels, _ := strings.Cut(line[:i], "{")
		switch {
		case name == "dbpool_up":
			up = v == 1
		case name == "dbpool_scrape_success" && strings.Contains(labels, `collector="activity"`):
			activityOK = v == 1
		case name == "dbpool_scrape_duration_seconds" && strings.Contains(labels, `collector="activity"`):
			f.activityJob = seconds(v)
		case name == "dbpool_scrape_duration_seconds" && strings.Contains(labels, `collector="probe"`):
			f.probeJob, f.hasProbe = seconds(v), true
		case name == "dbpool_probe_connect_success":
			f.probeOK = v == 1
		case name == "dbpool_server_connections":
			f.seen += int(v)
		}
	}
	if err := sc.Err(); err != nil {
		return f, err
	}
	if !up || !activityOK {
		return f, fmt.Errorf("scrape failed (dbpool_up=%v, activity success=%v)", up, activityOK)
	}
	return f, nil
}

func seconds(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }

// procMemory returns VmRSS and VmHWM (peak RSS) of a process in KiB.
func procMemory(pid int) (rss, hwm int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	return rss, hwm
}

// pgbench runs ActivityQuery as a one-statement script with one client.
type pgbench struct {
	bin, script    string
	host           string
	port           int
	user, password string
}

var pgbenchLatency = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)

func (p pgbench) run(ctx context.Context, transactions int) (time.Duration, error) {
	// -M prepared: the exporter's pgx connection prepares the query once and then only
	// executes it, and so does the bare pgx run; with the simple protocol pgbench would
	// also plan the pg_stat_activity view every time. -P makes pgbench time every
	// transaction, so the average leaves out the initial login; the interval is longer than
	// the run, so no progress lines appear.
	cmd := exec.CommandContext(ctx, p.bin, "-n", "-M", "prepared", "-f", p.script, "-t", strconv.Itoa(transactions), "-c", "1", "-P", "3600",
		"-h", p.host, "-p", strconv.Itoa(p.port), "-U", p.user, "postgres")
	cmd.Env = append(cleanEnv(), "PGPASSWORD="+p.password, "PGSSLMODE=disable", "PGAPPNAME="+benchAppName+"_pgbench")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	m := pgbenchLatency.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench: no \"latency average\" in its output:\n%s", out)
	}
	ms, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(ms * float64(time.Millisecond)), nil
}

// cleanEnv keeps the caller's database settings away from the child processes.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "PG"), strings.HasPrefix(kv, "DB_"),
			strings.HasPrefix(kv, "DATA_SOURCE_NAME="), strings.HasPrefix(kv, "DATABASE_URL="):
			continue
		}
		env = append(env, kv)
	}
	return env
}

func randomPassword() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// --- exporter processes ---

type exporterProc struct {
	label string
	url   string
	cmd   *exec.Cmd
	done  chan struct{}
}

func startExporter(ctx context.Context, bin, label, dsn string, args []string) (*exporterProc, error) {
	port, err := pgtest.FreePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, append([]string{"--web.listen-address=" + addr}, args...)...)
	cmd.Env = append(cleanEnv(), "DATA_SOURCE_NAME="+dsn)
	cmd.Stdout = &prefixWriter{prefix: "exporter[" + label + "]: ", w: os.Stderr}
	cmd.Stderr = cmd.Stdout
	// Its own process group: Ctrl-C reaches only this program, which stops the exporter in
	// order. Pdeathsig: if this program is killed, the exporter goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start exporter: %w", err)
	}
	e := &exporterProc{label: label, url: "http://" + addr + "/metrics", cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(e.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/-/healthy")
		if err == nil {
			resp.Body.Close()
			return e, nil
		}
		select {
		case <-e.done:
			return nil, fmt.Errorf("exporter (%s) exited during startup", label)
		case <-ctx.Done():
			e.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.stop()
			return nil, fmt.Errorf("exporter (%s) not healthy after 15s: %w", label, err)
		}
	}
}

func (e *exporterProc) pid() int { return e.cmd.Process.Pid }

func (e *exporterProc) stop() {
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(10 * time.Second):
		_ = e.cmd.Process.Kill()
		<-e.done
	}
}

// prefixWriter tags each line of a child's log.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
}

// --- application sessions ---

type kind int

const (
	idle kind = iota
	idleInTx
	active     // SELECT pg_sleep(3600)
	lockWaiter // active, waiting for bench_lock
	kinds
)

// mix is how many sessions of each kind a level has.
type mix [kinds]int

// mixFor is a busy but healthy service: most pooled connections idle, a tenth in an open
// transaction, a twentieth running a query, one in a hundred stuck behind a lock.
func mixFor(n int) mix {
	var m mix
	m[active] = max(1, int(math.Round(float64(n)*0.05)))
	m[idleInTx] = max(1, int(math.Round(float64(n)*0.10)))
	m[lockWaiter] = int(math.Round(float64(n) * 0.01))
	m[idle] = n - m[active] - m[idleInTx] - m[lockWaiter]
	return m
}

func (m mix) String() string {
	return fmt.Sprintf("%d idle, %d idle in transaction (one holds a lock), %d running pg_sleep, %d waiting on that lock",
		m[idle], m[idleInTx], m[active], m[lockWaiter])
}

type session struct {
	conn *pgx.Conn
	// done is closed when the session's background statement returned; nil for sessions
	// without one.
	done chan struct{}
}

type sessionSet struct {
	cfg   *pgx.ConnConfig
	bgCtx context.Context // background statements; cancelled only as a last resort
	bgEnd context.CancelFunc

	mu       sync.Mutex
	sessions []*session
	have     mix
	next     int // round-robin index into the application names
}

func newSessionSet(cfg *pgx.ConnConfig) *sessionSet {
	ctx, cancel := context.WithCancel(context.Background())
	return &sessionSet{cfg: cfg, bgCtx: ctx, bgEnd: cancel}
}

func (s *sessionSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func (s *sessionSet) appName() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.next
	s.next++
	prefix := "api"
	if (i/appNamesPerKind)%2 == 1 {
		prefix = "worker"
	}
	return fmt.Sprintf("%s-%d", prefix, i%appNamesPerKind)
}

// grow opens sessions until the set holds want. The lock holder comes first, so that waiters
// have something to wait for.
func (s *sessionSet) grow(ctx context.Context, want mix) error {
	if s.have[idleInTx] == 0 && want[idleInTx] > 0 {
		if err := s.open(ctx, idleInTx, true); err != nil {
			return err
		}
	}
	s.mu.Lock()
	have := s.have
	s.mu.Unlock()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(dialers)
	for k := range kinds {
		for range want[k] - have[k] {
			g.Go(func() error { return s.open(gctx, k, false) })
		}
	}
	return g.Wait()
}

func (s *sessionSet) open(ctx context.Context, k kind, holdLock bool) error {
	cfg := s.cfg.Copy()
	cfg.RuntimeParams["application_name"] = s.appName()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("open application session: %w", err)
	}
	sess := &session{conn: conn}
	s.mu.Lock()
	s.sessions = append(s.sessions, sess)
	s.mu.Unlock()

	// A pooled connection has run queries before; so do these.
	setup := []string{"SELECT 1"}
	switch {
	case k == idleInTx && holdLock:
		setup = []string{"BEGIN", "LOCK TABLE bench_lock IN ACCESS EXCLUSIVE MODE"}
	case k == idleInTx:
		setup = []string{"BEGIN", "SELECT 1"}
	}
	for _, q := range setup {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("session setup %q: %w", q, err)
		}
	}
	var background []string
	switch k {
	case active:
		background = []string{"SELECT pg_sleep(3600)"}
	case lockWaiter:
		background = []string{"BEGIN", "LOCK TABLE bench_lock IN ACCESS EXCLUSIVE MODE"}
	}
	if len(background) > 0 {
		sess.done = make(chan struct{})
		go func() {
			defer close(sess.done)
			for _, q := range background {
				// Ends with "canceling statement due to user request" at cleanup.
				if _, err := conn.Exec(s.bgCtx, q); err != nil {
					return
				}
			}
		}()
	}
	s.mu.Lock()
	s.have[k]++
	s.mu.Unlock()
	return nil
}

// close cancels the background statements on the server (pg_cancel_backend, so that no
// backend keeps sleeping), then closes every session.
func (s *sessionSet) close(pg *pgtest.Postgres) {
	s.mu.Lock()
	sessions := s.sessions
	s.sessions = nil
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = pg.Exec(ctx, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = '"+appRole+"' AND state = 'active'")
	timeout := time.After(10 * time.Second)
	for _, sess := range sessions {
		if sess.done == nil {
			continue
		}
		select {
		case <-sess.done:
		case <-timeout:
			// Last resort: pgx gives up on the socket; the server then ends the backend
			// at shutdown.
			s.bgEnd()
			<-sess.done
		}
	}
	s.bgEnd()
	var g errgroup.Group
	g.SetLimit(dialers * 4)
	for _, sess := range sessions {
		g.Go(func() error {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return sess.conn.Close(c)
		})
	}
	_ = g.Wait()
}

// waitForMix waits until pg_stat_activity shows the sessions in their intended states: the
// background statements start asynchronously.
func waitForMix(ctx context.Context, monitor *pgx.Conn, want mix) error {
	const q = `SELECT
  count(*) FILTER (WHERE state = 'idle'),
  count(*) FILTER (WHERE state = 'idle in transaction'),
  count(*) FILTER (WHERE state = 'active' AND wait_event_type IS DISTINCT FROM 'Lock'),
  count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock')
FROM pg_stat_activity WHERE usename = $1`
	deadline := time.Now().Add(60 * time.Second)
	for {
		var got mix
		if err := monitor.QueryRow(ctx, q, appRole).Scan(&got[idle], &got[idleInTx], &got[active], &got[lockWaiter]); err != nil {
			return err
		}
		if got == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sessions did not reach their states in 60s: want %s; have %s", want, got)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// --- report ---

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	// Nearest rank.
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func mib(kib int) string {
	if kib < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(kib)/1024)
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return math.NaN()
	}
	return float64(a) / float64(b)
}

func printResults(o options, results []levelResult) {
	fmt.Println()
	fmt.Printf("Scrape latency: %d sequential GET /metrics per exporter and level (after %d warm-up), interleaved with\n", o.scrapes, o.warmup)
	fmt.Printf("%d runs of the bare activity query over pgx; pgbench avg: -M prepared -t %d -c 1 with the same query.\n", o.queries, o.queries)
	fmt.Println("ratio = scrape / bare query (pgx), at the same percentile. RSS: exporter VmRSS after the level.")
	fmt.Println()
	head := []string{"backends", "exporter", "scrape p50", "scrape p95", "bare p50", "bare p95", "ratio p50", "ratio p95", "pgbench avg", "RSS", "series all/dbpool_"}
	var rows [][]string
	for _, r := range results {
		bp50, bp95 := percentile(r.bare, 50), percentile(r.bare, 95)
		for _, e := range r.exporters {
			sp50, sp95 := percentile(e.scrapes, 50), percentile(e.scrapes, 95)
			rows = append(rows, []string{
				strconv.Itoa(r.backends), e.label, ms(sp50), ms(sp95), ms(bp50), ms(bp95),
				fmt.Sprintf("%.2fx", ratio(sp50, bp50)), fmt.Sprintf("%.2fx", ratio(sp95, bp95)),
				ms(r.pgbenchAvg), mib(e.rssKiB), fmt.Sprintf("%d/%d", e.seriesAll, e.seriesDbpool),
			})
		}
	}
	printTable(head, rows)

	fmt.Println()
	fmt.Println("Inside the exporter (medians of its own dbpool_scrape_duration_seconds per job; the jobs run concurrently):")
	fmt.Println()
	head = []string{"backends", "exporter", "activity job p50", "probe job p50", "probe failures", "backends counted", "peak RSS"}
	rows = nil
	for _, r := range results {
		for _, e := range r.exporters {
			probe, failed := "-", "-"
			if len(e.probeJob) > 0 {
				probe, failed = ms(percentile(e.probeJob, 50)), fmt.Sprintf("%d/%d", e.probeFailed, len(e.probeJob))
			}
			rows = append(rows, []string{strconv.Itoa(r.backends), e.label, ms(percentile(e.activityJob, 50)), probe, failed,
				strconv.Itoa(e.seen), mib(e.hwmKiB)})
		}
	}
	printTable(head, rows)

	if len(results) == 0 {
		return
	}
	fmt.Println()
	last, first := results[len(results)-1], results[0]
	bare := percentile(last.bare, 50)
	for i, e := range last.exporters {
		r := ratio(percentile(e.scrapes, 50), bare)
		verdict := "met"
		if r > 1.5 {
			verdict = "not met"
		}
		fmt.Printf("target scrape p50 <= 1.5x bare query p50 at %d backends, %s: %.2fx (%s)\n", last.backends, e.label, r, verdict)
		f := first.exporters[i]
		fmt.Printf("memory %s: RSS %s at %d backends, %s at %d (%+.1f MiB)\n", e.label, mib(f.rssKiB), first.backends,
			mib(e.rssKiB), last.backends, float64(e.rssKiB-f.rssKiB)/1024)
	}
}

func printTable(head []string, rows [][]string) {
	width := make([]int, len(head))
	for i, h := range head {
		width[i] = len(h)
	}
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	line := func(cells []string) {
		parts := make([]string, len(cells))
		for i, c := range cells {
			if i == 1 { // the label column reads better left-aligned
				parts[i] = fmt.Sprintf("%-*s", width[i], c)
			} else {
				parts[i] = fmt.Sprintf("%*s", width[i], c)
			}
		}
		fmt.Println(strings.TrimRight(strings.Join(parts, " | "), " "))
	}
	line(head)
	sep := make([]string, len(head))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	fmt.Println(strings.Join(sep, "-|-"))
	for _, r := range rows {
		line(r)
	}
}
