package benchkit

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ScrapeFacts are what one dbpool_exporter exposition says about itself.
type ScrapeFacts struct {
	SeriesAll, SeriesDbpool int
	ActivityJob, ProbeJob   time.Duration
	HasProbe, ProbeOK       bool
	// Seen is the sum of dbpool_server_connections: the client backends the exporter counted.
	Seen int
}

// ParseScrape counts series and reads the exporter's self-reported figures. A scrape whose
// activity sample failed is an error: timing failed scrapes would flatter the exporter.
func ParseScrape(body []byte) (ScrapeFacts, error) {
	var f ScrapeFacts
	up, activityOK := false, false
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f.SeriesAll++
		if !strings.HasPrefix(line, "dbpool_") {
			continue
		}
		f.SeriesDbpool++
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
			f.ActivityJob = seconds(v)
		case name == "dbpool_scrape_duration_seconds" && strings.Contains(labels, `collector="probe"`):
			f.ProbeJob, f.HasProbe = seconds(v), true
		case name == "dbpool_probe_connect_success":
			f.ProbeOK = v == 1
		case name == "dbpool_server_connections":
			f.Seen += int(v)
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

// CountSeries counts the lines of an exposition that are samples (not comments or blank).
func CountSeries(body []byte) int {
	n := 0
	for line := range bytes.SplitSeq(body, []byte("\n")) {
		if len(line) > 0 && line[0] != '#' {
			n++
		}
	}
	return n
}

// ProcCPU returns the user plus system CPU time a process has used so far (utime + stime
// in /proc/PID/stat, in clock ticks of 10 ms), or -1 when it cannot be read.
func ProcCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name (field 2) may hold spaces; the fields after its ')' are fixed.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	utime, err1 := strconv.Atoi(f[11])
	stime, err2 := strconv.Atoi(f[12])
	if err1 != nil || err2 != nil {
		return -1
	}
	// USER_HZ is 100 on every Linux architecture Go runs on.
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// ProcMemory returns VmRSS and VmHWM (peak RSS) of a process in KiB.
func ProcMemory(pid int) (rss, hwm int) {
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
