package collector

import (
	"testing"
	"time"
)

func TestScrapeTimeout(t *testing.T) {
	const maxTimeout = 10 * time.Second
	for _, tc := range []struct {
		header string
		offset time.Duration
		want   time.Duration
	}{
		{"", 500 * time.Millisecond, maxTimeout},
		{"garbage", 500 * time.Millisecond, maxTimeout},
		{"-3", 500 * time.Millisecond, maxTimeout},
		{"0", 500 * time.Millisecond, maxTimeout},
		{"5", 500 * time.Millisecond, 4500 * time.Millisecond},
		{"1.5", 500 * time.Millisecond, time.Second},
		{"0.3", 500 * time.Millisecond, 300 * time.Millisecond}, // offset larger than the timeout is ignored
		{"120", 500 * time.Millisecond, maxTimeout},             // capped
		{" 2 ", 0, 2 * time.Second},
		{"10abc", 500 * time.Millisecond, maxTimeout}, // not a number
		{"NaN", 500 * time.Millisecond, maxTimeout},
		{"+Inf", 500 * time.Millisecond, maxTimeout},
		{"1e300", 500 * time.Millisecond, maxTimeout},       // would overflow time.Duration
		{"1e-10", 500 * time.Millisecond, minScrapeTimeout}, // floor: not even a ping fits below it
		{"10.4", 500 * time.Millisecond, 9900 * time.Millisecond},
	} {
		if got := ScrapeTimeout(tc.header, tc.offset, maxTimeout); got != tc.want {
			t.Errorf("ScrapeTimeout(%q, %v) = %v, want %v", tc.header, tc.offset, got, tc.want)
		}
	}
}
