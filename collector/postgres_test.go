package collector

import (
	"context"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbpool/dbpool_exporter/tools/pgtest"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// exporterBackends counts the exporter's own sessions (monitoring and probe) on the server.
const exporterBackendsQuery = `SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('dbpool_exporter', 'dbpool_exporter_probe')`

// TestScrapeConcurrentShareOneCollection: 50 parallel scrapes never open more than
// --pg.max-connections monitoring connections plus one probe login.
func TestScrapeConcurrentShareOneCollection(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	tgt := newTestTarget(t, pg.DSN(monitorRole, monitorPassword, "postgres"), nil, nil, nil)

	cfg, err := pgx.ParseConfig(pg.SuperuserDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "watcher"
	watcher, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close(context.Background())

	stop := make(chan struct{})
	peak := 0
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			var n int
			if err := watcher.QueryRow(context.Background(), exporterBackendsQuery).Scan(&n); err == nil {
				peak = max(peak, n)
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	var wg sync.WaitGroup
	ups := make([]float64, 50)
	for round := range 3 {
		for i := range 50 {
			wg.Go(func() {
				mfs := gather(t, tgt, 10*time.Second)
				v, _ := value(mfs, "dbpool_up", nil)
				ups[i] = v
			})
		}
		wg.Wait()
		for i, v := range ups {
			if v != 1 {
				t.Fatalf("round %d scrape %d: dbpool_up = %v", round, i, v)
			}
		}
	}
	close(stop)
	<-watched
	if peak > 2 {
		t.Errorf("peak exporter backends during 150 scrapes = %d, want <= 1 monitoring + 1 probe", peak)
	}
	if peak < 1 {
		t.Errorf("never saw the exporter's backend (peak %d): the watcher query is broken", peak)
	}
	t.Logf("peak exporter backends: %d", peak)
}

// TestScrapeServerDownAndRestart: a stopped server answers within the deadline with
// dbpool_up 0; after a restart the next scrape recovers without restarting the exporter.
func TestScrapeServerDownAndRestart(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	tgt := newTestTarget(t, pg.DSN(monitorRole, monitorPassword, "postgres"), nil, nil, nil)
	if v := mustValue(t, gather(t, tgt, 10*time.Second), "dbpool_up", nil); v != 1 {
		t.Fatalf("dbpool_up = %v before stop", v)
	}
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	const deadline = 2 * time.Second
	mfs := gatherWithin(t, tgt, deadline)
	if v := mustValue(t, mfs, "dbpool_up", nil); v != 0 {
		t.Errorf("dbpool_up = %v with the server stopped", v)
	}
	if v := mustValue(t, mfs, "dbpool_scrape_success", map[string]string{"collector": "activity"}); v != 0 {
		t.Errorf("scrape_success{activity} = %v", v)
	}
	if v := mustValue(t, mfs, "dbpool_probe_connect_success", nil); v != 0 {
		t.Errorf("probe_connect_success = %v", v)
	}
	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	mfs = gather(t, tgt, 10*time.Second)
	if v := mustValue(t, mfs, "dbpool_up", nil); v != 1 {
		t.Errorf("dbpool_up = %v on the first scrape after restart", v)
	}
	if v := mustValue(t, mfs, "dbpool_scrape_success", map[string]string{"collector": "activity"}); v != 1 {
		t.Errorf("scrape_success{activity} = %v after restart", v)
	}
}

// TestScrapeBlockedByLock: a session holding a lock that the activity query needs makes the
// scrape fail fast (within the 1 s deadline), and the server-side query is cancelled.
func TestScrapeBlockedByLock(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	tgt := newTestTarget(t, pg.DSN(monitorRole, monitorPassword, "postgres"), nil, nil, nil)
	gather(t, tgt, 10*time.Second) // connect and cache settings before the lock

	cfg, err := pgx.ParseConfig(pg.SuperuserDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	holder, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	// pg_stat_activity joins pg_database: an exclusive lock on it blocks the activity query.
	if _, err := holder.Exec(context.Background(), "BEGIN; LOCK TABLE pg_catalog.pg_database IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	const deadline = time.Second
	mfs := gatherWithin(t, tgt, deadline)
	if v := mustValue(t, mfs, "dbpool_scrape_success", map[string]string{"collector": "activity"}); v != 0 {
		t.Errorf("scrape_success{activity} = %v while blocked", v)
	}
	if v := mustValue(t, mfs, "dbpool_up", nil); v != 1 {
		t.Errorf("dbpool_up = %v: the server answered the ping, only the query was blocked", v)
	}
	// The abandoned query must not keep waiting on the server.
	var stuck int
	for range 100 {
		if err := holder.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbpool_exporter' AND state = 'active'`).Scan(&stuck); err != nil {
			t.Fatal(err)
		}
		if stuck == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if stuck != 0 {
		t.Errorf("%d exporter queries still running on the server after the scrape gave up", stuck)
	}
	if _, err := holder.Exec(context.Background(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if v := mustValue(t, gather(t, tgt, 10*time.Second), "dbpool_scrape_success", map[string]string{"collector": "activity"}); v != 1 {
		t.Errorf("scrape_success{activity} = %v after the lock was released", v)
	}
}

// TestScrapeStoppedPostmaster: with the postmaster frozen (kill -STOP), existing sessions still
// work but new logins hang; the scrape answers in time with the probe saying logins fail.
func TestScrapeStoppedPostmaster(t *testing.T) {
	pg := testServer(t, pgtest.Options{})
	tgt := newTestTarget(t, pg.DSN(monitorRole, monitorPassword, "postgres"), nil, nil, nil)
	gather(t, tgt, 10*time.Second)
	pid, err := pg.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := func() { _ = syscall.Kill(pid, syscall.SIGCONT) }
	defer cont()
	const deadline = 2 * time.Second
	mfs := gatherWithin(t, tgt, deadline)
	if v := mustValue(t, mfs, "dbpool_probe_connect_success", nil); v != 0 {
		t.Errorf("probe_connect_success = %v with a frozen postmaster", v)
	}
	if v := mustValue(t, mfs, "dbpool_up", nil); v != 1 {
		t.Errorf("dbpool_up = %v: the monitoring session still works", v)
	}
	cont()
	if v := mustValue(t, gather(t, tgt, 10*time.Second), "dbpool_probe_connect_success", nil); v != 1 {
		t.Errorf("probe_connect_success = %v after SIGCONT", v)
	}
}

// TestProbeTooManyClients: when ordinary slots are full, the probe's login is refused
// (SQLSTATE 53300) while the established monitoring connection keeps dbpool_up at 1.
func TestProbeTooManyClients(t *testing.T) {
	pg := testServer(t, pgtest.Options{MaxConnections: 8, SuperuserReservedConnections: 3})
	logs := &testbin.Buffer{}
	tgt := newTestTarget(t, pg.DSN(monitorRole, monitorPassword, "postgres"), nil, logs, nil)
	gather(t, tgt, 10*time.Second)
	// 8 - 3 reserved = 5 ordinary slots; the monitoring connection holds one.
	for range 4 {
		session(t, pg, "filler")
	}
	mfs := gather(t, tgt, 5*time.Second)
	if v := mustValue(t, mfs, "dbpool_probe_connect_success", nil); v != 0 {
		t.Errorf("probe_connect_success = %v with all slots taken", v)
	}
	if v := mustValue(t, mfs, "dbpool_up", nil); v != 1 {
		t.Errorf("dbpool_up = %v", v)
	}
	if !strings.Contains(logs.String(), "53300") && !strings.Contains(logs.String(), "too many clients") {
		t.Errorf("the probe failure log does not say why:\n%s", logs)
	}
	if strings.Contains(logs.String(), monitorPassword) {
		t.Error("password in logs")
	}
}
