package collector

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// maxAppDocument bounds one endpoint's answer: thousands of instances fit many times over,
// and a wrong URL (a download) must not fill the exporter's memory.
const maxAppDocument = 8 << 20

// appSource reads the app endpoints of a PostgreSQL target, the applications' own reports of
// their pools (dbpool-stats JSON, e.g. from integrations/python), all at once on every
// scrape. Each apps entry gives its endpoints (app_discovery.go): one URL, every address of a
// DNS name, or every target of a file_sd file. The instances that answered add up to one
// exact sample per pool (AppCounters keeps the counters from falling when instances and
// endpoints come and go). An endpoint that is down or answers garbage, or a discovery that
// fails, fails the source and shows in its own series, and is logged once when it starts
// failing and once when it recovers; the others' instances still count.
type appSource struct {
	target   string
	entries  []*appEntry
	counters *AppCounters
	logger   *slog.Logger
	parts    *stateLogger // per entry (discovery) and endpoint
}

// appEntry is one apps entry: where its endpoints come from and the client that reads them.
type appEntry struct {
	app    poolcfg.App
	find   endpointFinder
	client *http.Client
}

// appEndpoint is one endpoint of an apps entry.
type appEndpoint struct {
	addr string // address:port as found (the endpoint label): the URL's host
	url  poolcfg.AppURL
	// host is the Host header when the URL names an address that DNS gave for a name.
	host string
}

func newAppSource(target string, apps []poolcfg.App, resolver appResolver, counters *AppCounters, logger *slog.Logger) (*appSource, error) {
	s := &appSource{target: target, counters: counters, logger: logger, parts: newStateLogger(logger)}
	for _, a := range apps {
		e, err := newAppEntry(a, resolver)
		if err != nil {
			return nil, fmt.Errorf("target %q: app %q: %w", target, a.Name, err)
		}
		s.entries = append(s.entries, e)
	}
	return s, nil
}

func (*appSource) Name() string { return metrics.CollectorApp }

// closeIdle closes the idle connections to the endpoints.
func (s *appSource) closeIdle() {
	for _, e := range s.entries {
		e.client.CloseIdleConnections()
	}
}

// Scrape finds the endpoints of every entry, fetches them all concurrently and merges the
// instances per pool. An endpoint that reports no instance yet (nothing instrumented, or
// every worker starting) adds nothing. Finding gets half the time left, so that a slow DNS
// server leaves time to read the endpoints of its last answer.
func (s *appSource) Scrape(ctx context.Context) (Scraped, error) {
	found := make([][]appEndpoint, len(s.entries))
	findErrs := make([]error, len(s.entries))
	findCtx, cancel := halfTimeLeft(ctx)
	var wg sync.WaitGroup
	for i, e := range s.entries {
		wg.Go(func() { found[i], findErrs[i] = e.endpoints(findCtx) })
	}
	wg.Wait()
	cancel()

	type answer struct {
		instances, exited []metrics.PoolStats
		err               error
	}
	answers := make([][]answer, len(s.entries))
	for i, e := range s.entries {
		answers[i] = make([]answer, len(found[i]))
		for j := range found[i] {
			wg.Go(func() {
				ins, exited, err := e.collect(ctx, &found[i][j], s.target)
				answers[i][j] = answer{ins, exited, err}
			})
		}
	}
	wg.Wait()

	var out Scraped
	var instances, exited []metrics.PoolStats
	var failed []error
	live := map[string]bool{}
	for i, e := range s.entries {
		name, pool := e.app.Name, e.app.Pool
		if _, ok := e.find.(staticEndpoint); !ok {
			out.Metrics = append(out.Metrics, metrics.AppDiscoverySuccess.Metric(metrics.Bool(findErrs[i] == nil), s.target, pool, name))
			s.logPart(name, "", findErrs[i], len(found[i]))
			live[name] = true
		}
		if findErrs[i] != nil {
			failed = append(failed, fmt.Errorf("app %s: %w", name, findErrs[i]))
		}
		for j, a := range answers[i] {
			ep := &found[i][j]
			out.Metrics = append(out.Metrics, metrics.AppEndpointUp.Metric(metrics.Bool(a.err == nil), s.target, pool, name, ep.addr))
			s.logPart(name, ep.addr, a.err, 0)
			live[name+"\x00"+ep.addr] = true
			instances = append(instances, a.instances...)
			exited = append(exited, a.exited...)
			if a.err != nil {
				failed = append(failed, fmt.Errorf("app %s: %w", name, a.err))
			}
		}
	}
	for _, key := range s.parts.forget(func(key string) bool { return live[key] }) {
		name, addr, _ := strings.Cut(key, "\x00")
		s.logger.Info("app endpoint no longer found, after failing", "target", s.target, "collector", metrics.CollectorApp, "app", name, "endpoint", addr)
	}
	out.Pools = s.counters.merge(s.target, instances, exited, time.Now())
	if err := errors.Join(failed...); err != nil {
		return out, partsLogged{err}
	}
	return out, nil
}

// logPart logs an entry's discovery (addr "") or one of its endpoints once when it starts
// failing and once when it recovers.
func (s *appSource) logPart(app, addr string, err error, endpoints int) {
	key, what := app, "app discovery"
	attrs := []any{"target", s.target, "collector", metrics.CollectorApp, "app", app}
	if addr != "" {
		key, what = app+"\x00"+addr, "app endpoint"
		attrs = append(attrs, "endpoint", addr)
	} else {
		attrs = append(attrs, "endpoints", endpoints)
	}
	switch started, recovered := s.parts.change(key, err != nil); {
	case started:
		s.logger.Warn(what+" failed", append(attrs, "err", poolcfg.RedactError(err))...)
	case recovered:
		s.logger.Info(what+" recovered", attrs...)
	}
}

// halfTimeLeft is ctx with half the time left to its deadline.
func halfTimeLeft(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok {
		return context.WithDeadline(ctx, time.Now().Add(time.Until(d)/2))
	}
	return context.WithCancel(ctx)
}

// newAppClient is the HTTP client of an apps entry. Deadlines come from each scrape's
// context; the transport keeps one idle connection per endpoint so that a scrape costs no new
// TCP or TLS handshake, and resolves host names with resolver. serverName, when set, is the
// name that TLS certificates are checked against (a dns+https entry's name: its endpoints'
// URLs carry addresses).
func newAppClient(resolver *net.Resolver, serverName string) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Resolver: resolver, KeepAlive: 30 * time.Second}).DialContext
	tr.MaxIdleConns = 0 // no cap across endpoints: up to MaxAppEndpoints per entry
	tr.MaxIdleConnsPerHost = 1
	tr.IdleConnTimeout = 5 * time.Minute
	tr.Proxy = nil // endpoints are the application's own listeners, never behind a proxy
	if serverName != "" {
		tr.TLSClientConfig = &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport: tr,
		// A redirect could send the basic-auth credentials elsewhere; an endpoint answers itself.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// collect fetches the endpoint ep of the entry once and returns one sample per instance, of
// the live instances and of the processes that exited.
func (e *appEntry) collect(ctx context.Context, ep *appEndpoint, target string) (live, exited []metrics.PoolStats, err error) {
	doc, err := ep.fetch(ctx, e.client)
	if err != nil {
		return nil, nil, err
	}
	return docSamples(doc, e.app.AppPool, target, e.app.Pool)
}

// docSamples turns the instances of appPool in doc into samples of pool on target, refusing
// the document if any of them is not a pool's.
func docSamples(doc *appDoc, appPool, target, pool string) (live, exited []metrics.PoolStats, err error) {
	liveIns, exitedIns, err := selectInstances(doc, appPool)
	if err != nil {
		return nil, nil, err
	}
	samples := func(instances []appInstance, what string) ([]metrics.PoolStats, error) {
		out := make([]metrics.PoolStats, 0, len(instances))
		for i := range instances {
			p, err := instanceStats(&instances[i])
			if err != nil {
				return nil, fmt.Errorf("%sinstance %q: %w", what, instances[i].Instance, err)
			}
			p.Target, p.Pool = target, pool
			out = append(out, p)
		}
		return out, nil
	}
	if live, err = samples(liveIns, ""); err != nil {
		return nil, nil, err
	}
	if exited, err = samples(exitedIns, "exited "); err != nil {
		return nil, nil, err
	}
	return live, exited, nil
}

func (e *appEndpoint) fetch(ctx context.Context, client *http.Client) (*appDoc, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url.Secret(), nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %v", e.url, unwrapURLError(err))
	}
	if e.host != "" {
		req.Host = e.host
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", ApplicationName)
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %v", e.url, unwrapURLError(err))
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
		if resp.StatusCode/100 == 3 {
			return nil, fmt.Errorf("GET %s: HTTP %s: redirects are not followed (basic-auth credentials must not go elsewhere); configure the URL it redirects to", e.url, resp.Status)
		}
		return nil, fmt.Errorf("GET %s: HTTP %s", e.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAppDocument+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading the answer: %v", e.url, unwrapURLError(err))
	}
	if len(body) > maxAppDocument {
		return nil, fmt.Errorf("GET %s: the answer is larger than %d bytes: not a dbpool-stats document", e.url, maxAppDocument)
	}
	doc, err := parseAppDoc(body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", e.url, err)
	}
	return doc, nil
}

// unwrapURLError drops net/url's quoting of the request URL, which would carry the password;
// the caller names the endpoint by its redacted URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
