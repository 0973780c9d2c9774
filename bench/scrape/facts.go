package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// scrapeFacts are what one exposition says about itself.
type scrapeFacts struct {
	seriesAll, seriesDbpool int
	activityJob, probeJob   time.Duration
	hasProbe, probeOK       bool
	seen                    int
}

// parseScrape counts series and reads the exporter's self-reported figures. A scrape whose
// activity sample failed is an error: timing failed scrapes would flatter the exporter.
func parseScrape(body []byte) (scrapeFacts, error) {
	var f scrapeFacts
	up, activityOK := false, false
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f.seriesAll++
		if !strings.HasPrefix(line, "dbpool_") {
			continue
		}
		f.seriesDbpool++
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
			f.activityJob = seconds(v)
		case name == "dbpool_scrape_duration_seconds" && strings.Contains(labels, `collector="probe"`):
			f.probeJob, f.hasProbe = seconds(v), true
		case name == "dbpool_probe_connect_success":
			f.probeOK = v == 1
		case name == "dbpool_server_connections":
			f.seen += int(v)
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

// procMemory returns VmRSS and VmHWM (peak RSS) of a process in KiB.
func procMemory(pid int) (rss, hwm int) {
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
