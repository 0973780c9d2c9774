package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// maxInFlight bounds the load generator's open requests; arrivals beyond it are dropped.
const maxInFlight = 200

// loadGen sends GET requests to one URL at random (Poisson) arrivals, each on its own
// goroutine, as independent users would, and counts what they got back.
type loadGen struct {
	sent, ok, unavailable, failed, dropped atomic.Int64
	wg                                     sync.WaitGroup
}

// startLoad sends rate requests per second on average to url until ctx ends.
func startLoad(ctx context.Context, url string, rate float64) *loadGen {
	l := &loadGen{}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: maxInFlight}}
	slots := make(chan struct{}, maxInFlight)
	l.wg.Go(func() {
		next := time.Now()
		for {
			next = next.Add(time.Duration(rand.ExpFloat64() / rate * float64(time.Second)))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(next)):
			}
			select {
			case slots <- struct{}{}:
			default:
				l.dropped.Add(1)
				continue
			}
			l.sent.Add(1)
			l.wg.Go(func() {
				defer func() { <-slots }()
				l.do(ctx, client, url)
			})
		}
	})
	return l
}

func (l *loadGen) do(ctx context.Context, client *http.Client, url string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		l.failed.Add(1)
		return
	}
	resp, err := client.Do(req)
	if err != nil {
		l.failed.Add(1)
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		l.ok.Add(1)
	case http.StatusServiceUnavailable:
		l.unavailable.Add(1)
	default:
		l.failed.Add(1)
	}
}

// wait returns once the generator and its requests have stopped (after ctx ended).
func (l *loadGen) wait() { l.wg.Wait() }

// decodeJSON decodes an HTTP answer of status 200 into v and closes its body.
func decodeJSON(resp *http.Response, v any) error {
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %s", resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
