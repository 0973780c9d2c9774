package collector

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"unicode/utf8"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Leak detection's report in the dbpool-stats document (the integration's leak_threshold,
// HikariCP's leakDetectionThreshold): connections held longer than a threshold, and the
// places in the application that checked them out.

// maxLeakSiteText bounds a site's file and function name: the exporter keeps a pool's sites
// until the next scrape, and a name longer than this is no name a person reads.
const maxLeakSiteText = 512

// instanceLeaks checks an instance's leak report: detection off (threshold and count null,
// no sites), or on with a positive threshold, a count within the held connections, and sites
// of leaked connections (held longer than the threshold) that add up to at most the count.
func instanceLeaks(in *appInstance) (*metrics.LeakStats, error) {
	l := in.Leaks
	switch {
	case l == nil:
		return nil, nil
	case l.ThresholdSeconds == nil && l.Count == nil:
		if len(l.Sites) > 0 {
			return nil, errors.New("leaks.sites while leaks.count is null (detection off)")
		}
		return nil, nil // off: not observed, which is not 0
	case l.ThresholdSeconds == nil || l.Count == nil:
		return nil, errors.New("leaks.threshold_seconds and leaks.count must both be null (detection off) or both be set")
	case !(*l.ThresholdSeconds > 0) || math.IsInf(*l.ThresholdSeconds, 0):
		return nil, fmt.Errorf("leaks.threshold_seconds %v: must be a positive number of seconds", *l.ThresholdSeconds)
	case *l.Count < 0:
		return nil, fmt.Errorf("leaks.count %d is negative", *l.Count)
	case in.HeldConnections != nil && *l.Count > *in.HeldConnections:
		return nil, fmt.Errorf("leaks.count %d is more than the %d held connections", *l.Count, *in.HeldConnections)
	}
	threshold, count := *l.ThresholdSeconds, *l.Count
	ls := &metrics.LeakStats{ThresholdSeconds: threshold, Instances: 1, Count: count}
	rest := count
	for i, s := range l.Sites {
		switch {
		case s.Count < 1:
			return nil, fmt.Errorf("leaks.sites[%d].count %d: a site has at least one leaked connection", i, s.Count)
		case s.Count > rest:
			return nil, fmt.Errorf("leaks.sites add up to more than leaks.count %d", count)
		case !finiteNonNegative(s.OldestSeconds) || s.OldestSeconds < threshold:
			return nil, fmt.Errorf("leaks.sites[%d].oldest_seconds %v: a leaked connection is held longer than the threshold %v", i, s.OldestSeconds, threshold)
		case s.Line != nil && *s.Line < 0:
			return nil, fmt.Errorf("leaks.sites[%d].line %d is negative", i, *s.Line)
		}
		rest -= s.Count
		site := metrics.LeakSite{Count: s.Count, OldestSeconds: s.OldestSeconds}
		if s.File != nil {
			site.File = boundedText(*s.File, true)
		}
		if s.Function != nil {
			site.Function = boundedText(*s.Function, false)
		}
		if s.Line != nil {
			site.Line = *s.Line
		}
		ls.Sites = append(ls.Sites, site)
	}
	ls.Sites = topLeakSites(ls.Sites)
	return ls, nil
}

// mergeLeaks adds the leaks of two sets of instances of one pool: the counts of the sites
// that both have add up, the oldest is the older one, and the top MaxLeakSites stay. Nil,
// not observed, only when both are.
func mergeLeaks(a, b *metrics.LeakStats) *metrics.LeakStats {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	sum := &metrics.LeakStats{ThresholdSeconds: min(a.ThresholdSeconds, b.ThresholdSeconds),
		Instances: a.Instances + b.Instances, Count: a.Count + b.Count, Sites: slices.Clone(a.Sites)}
	for _, s := range b.Sites {
		i := slices.IndexFunc(sum.Sites, func(t metrics.LeakSite) bool {
			return t.File == s.File && t.Line == s.Line && t.Function == s.Function
		})
		if i < 0 {
			sum.Sites = append(sum.Sites, s)
			continue
		}
		sum.Sites[i].Count += s.Count
		sum.Sites[i].OldestSeconds = max(sum.Sites[i].OldestSeconds, s.OldestSeconds)
	}
	sum.Sites = topLeakSites(sum.Sites)
	return sum
}

// topLeakSites orders sites as the integration does, the most leaked connections first, then
// the oldest (then by place, so that the order is stable), and keeps MaxLeakSites.
func topLeakSites(sites []metrics.LeakSite) []metrics.LeakSite {
	slices.SortFunc(sites, func(a, b metrics.LeakSite) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(b.OldestSeconds, a.OldestSeconds),
			cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Function, b.Function))
	})
	return sites[:min(len(sites), metrics.MaxLeakSites)]
}

// boundedText cuts s to maxLeakSiteText bytes on a character boundary, marking the cut with
// "…": a file name keeps its end (the file), a function name its start.
func boundedText(s string, keepEnd bool) string {
	if len(s) <= maxLeakSiteText {
		return s
	}
	const mark = "…"
	n := maxLeakSiteText - len(mark)
	if keepEnd {
		i := len(s) - n
		for i < len(s) && !utf8.RuneStart(s[i]) {
			i++
		}
		return mark + s[i:]
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + mark
}
