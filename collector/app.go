package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// SourceApp is the source of pools that the application reports itself (dbpool-stats JSON
// from integrations/python): exact in-use, overflow, checkout time and timeouts.
const SourceApp = "app"

// Connection states of an application's SQLAlchemy pool, as SQLAlchemy names them; together
// they break dbpool_open_connections down for the app source.
const (
	StateCheckedOut = "checked_out"
	StateCheckedIn  = "checked_in"
	// StateConnecting counts connections the pool has reserved but not yet opened.
	StateConnecting = "connecting"
)

// appCollectorPrefix starts the collector label of an app endpoint: app:<name>.
const appCollectorPrefix = SourceApp + ":"

// maxAppDocument bounds one endpoint's answer: thousands of instances fit many times over,
// and a wrong URL (a download) must not fill the exporter's memory.
const maxAppDocument = 8 << 20

// appEndpoint reads one app endpoint for one configured pool of a PostgreSQL target.
type appEndpoint struct {
	name    string
	url     poolcfg.AppURL
	pool    string
	appPool string
	target  string
	client  *http.Client
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

// collect fetches the endpoint once and returns one sample per instance; the target adds up
// the instances of all its endpoints per pool (mergeAppPools). An endpoint that reports no
// instance yet (nothing instrumented, or every worker starting) succeeds with no sample.
func (e *appEndpoint) collect(ctx context.Context) ([]prometheus.Metric, []PoolStats, error) {
	doc, err := e.fetch(ctx)
	if err != nil {
		return nil, nil, err
	}
	instances, err := selectInstances(doc, e.appPool)
	if err != nil {
		return nil, nil, err
	}
	out := make([]PoolStats, 0, len(instances))
	for i := range instances {
		p, err := instanceStats(&instances[i])
		if err != nil {
			return nil, nil, fmt.Errorf("instance %q: %w", instances[i].Instance, err)
		}
		p.Target, p.Pool = e.target, e.pool
		out = append(out, p)
	}
	return nil, out, nil
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
