package benchkit

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// PrintHost prints the line that says where figures were taken.
func PrintHost(serverVersion string) {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	fmt.Printf("host: %d CPUs (%s), PostgreSQL %s, %s, load average %s\n", runtime.NumCPU(), cpu, serverVersion, runtime.Version(), LoadAvg())
}

// LoadAvg is the 1-minute load average: figures taken on a busy machine are noisy.
func LoadAvg() string {
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

// Percentile is the nearest-rank percentile p (0..100) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// MS formats d in milliseconds.
func MS(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// MiB formats a size in KiB as MiB; negative means unknown.
func MiB(kib int) string {
	if kib < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(kib)/1024)
}

// Ratio is a / b, NaN when b is not positive.
func Ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return math.NaN()
	}
	return float64(a) / float64(b)
}

// PrintTable prints rows under head with aligned columns; the second column (the label)
// is left-aligned, the others right-aligned.
func PrintTable(head []string, rows [][]string) {
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
