package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/dbpool/dbpool_exporter/internal/health"
	"github.com/dbpool/dbpool_exporter/poolcfg"
)

// adviseFromTimeout bounds the request to the daemon.
const adviseFromTimeout = 30 * time.Second

// adviseFromMaxBytes bounds the answer read from the daemon (500 pools of a few KB each).
const adviseFromMaxBytes = 64 << 20

// runAdviseFrom prints the answer of a running daemon (GET <base>/api/v1/pools): the same
// reports as its API and status page, drawn from its whole history, judged and printed as a
// sampling run's are.
func runAdviseFrom(a *adviseFlags, stdout, stderr io.Writer) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "%s advise: --advise.from: "+format+"\n", append([]any{exporterName}, args...)...)
		return adviseError
	}
	base, err := url.Parse(a.from)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		// Not quoted: a mistyped URL may still hold a password.
		return fail("not an http(s) URL: want the daemon's base URL, e.g. http://host:9930")
	}
	shown := base.Redacted()
	endpoint := base.JoinPath(strings.TrimPrefix(health.PoolsPath, "/"))
	ctx, cancel := context.WithTimeout(context.Background(), adviseFromTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint.String(), nil)
	if err != nil {
		return fail("%s: %v", shown, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fail("%s: %v", shown, poolcfg.RedactError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, adviseFromMaxBytes))
	if err != nil {
		return fail("%s: reading the answer: %v", shown, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fail("%s: %s answered %s", shown, health.PoolsPath, resp.Status)
	}
	var doc health.PoolsResponse
	if err := json.Unmarshal(body, &doc); err != nil {
		return fail("%s: not a dbpool_exporter %s answer: %v", shown, health.PoolsPath, err)
	}
	out := adviseOutput{
		From:                shown,
		WindowSeconds:       doc.WindowSeconds,
		Targets:             []adviseTarget{},
		IncludeUnconfigured: a.includeUnconfigured,
		NotCounted:          []string{},
		Pools:               doc.Pools,
	}
	for _, r := range doc.Pools {
		out.Samples += r.Window.Samples
	}
	out.judge()
	if !out.write(a.output, stdout, stderr) {
		return adviseError
	}
	if len(doc.Pools) == 0 {
		fmt.Fprintf(stderr, "%s advise: the daemon at %s tracks no pool yet\n", exporterName, shown)
	}
	return out.ExitCode
}
