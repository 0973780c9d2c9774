package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
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
// scrape. The instances that answered add up to one exact sample per pool (AppCounters keeps
// the counters from falling when instances come and go). An endpoint that is down or answers
// garbage fails the source, and the error names it, while the others' instances still count.
type appSource struct {
	target    string
	endpoints []appEndpoint
	counters  *AppCounters
}

// appEndpoint is one endpoint of an app pool.
type appEndpoint struct {
	name    string
	url     poolcfg.AppURL
	pool    string
	appPool string
	client  *http.Client
}

func newAppSource(target string, apps []poolcfg.App, client *http.Client, counters *AppCounters) *appSource {
	s := &appSource{target: target, counters: counters}
	for _, a := range apps {
		s.endpoints = append(s.endpoints, appEndpoint{name: a.Name, url: a.URL, pool: a.Pool, appPool: a.AppPool, client: client})
	}
	return s
}

func (*appSource) Name() string { return metrics.CollectorApp }

// Scrape fetches every endpoint concurrently and merges the instances per pool. An endpoint
// that reports no instance yet (nothing instrumented, or every worker starting) adds nothing.
func (s *appSource) Scrape(ctx context.Context) (Scraped, error) {
	type answer struct {
		instances []metrics.PoolStats
		err       error
	}
	answers := make([]answer, len(s.endpoints))
	var wg sync.WaitGroup
	for i := range s.endpoints {
		wg.Go(func() {
			e := &s.endpoints[i]
			ins, err := e.collect(ctx, s.target)
			if err != nil {
				err = fmt.Errorf("app %s: %w", e.name, err)
			}
			answers[i] = answer{ins, err}
		})
	}
	wg.Wait()
	var instances []metrics.PoolStats
	var failed []error
	for _, a := range answers {
		instances = append(instances, a.instances...)
		failed = append(failed, a.err)
	}
	// errors.Join leaves out the endpoints that answered; the log prints the rest on one line.
	return Scraped{Pools: s.counters.merge(s.target, instances, time.Now())}, errors.Join(failed...)
}

// newAppClient is the HTTP client of a target's app endpoints. Deadlines come from each
// scrape's context; the transport keeps one idle connection per endpoint so that a scrape
// costs no new TCP or TLS handshake.
func newAppClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 1
	tr.IdleConnTimeout = 5 * time.Minute
	tr.Proxy = nil // endpoints are the application's own listeners, never behind a proxy
	return &http.Client{
		Transport: tr,
		// A redirect could send the basic-auth credentials elsewhere; an endpoint answers itself.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// collect fetches the endpoint once and returns one sample per instance.
func (e *appEndpoint) collect(ctx context.Context, target string) ([]metrics.PoolStats, error) {
	doc, err := e.fetch(ctx)
	if err != nil {
		return nil, err
	}
	instances, err := selectInstances(doc, e.appPool)
	if err != nil {
		return nil, err
	}
	out := make([]metrics.PoolStats, 0, len(instances))
	for i := range instances {
		p, err := instanceStats(&instances[i])
		if err != nil {
			return nil, fmt.Errorf("instance %q: %w", instances[i].Instance, err)
		}
		p.Target, p.Pool = target, e.pool
		out = append(out, p)
	}
	return out, nil
}

func (e *appEndpoint) fetch(ctx context.Context) (*appDoc, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url.Secret(), nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %v", e.url, unwrapURLError(err))
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", ApplicationName)
	resp, err := e.client.Do(req)
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
