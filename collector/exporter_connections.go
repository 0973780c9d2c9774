package collector

import (
	"time"

	"github.com/dbpool/dbpool_exporter/internal/metrics"
)

// Which targets hold connections: the cap on connected targets and the idle sweeper.

// ConnectedTargets is the number of targets that hold, or may hold, monitoring connections:
// scraped at least once and not released since.
func (e *Exporter) ConnectedTargets() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.connectedLocked()
}

func (e *Exporter) connectedLocked() int {
	n := 0
	for _, en := range e.entries {
		if en.connected {
			n++
		}
	}
	return n
}

// enforceCapLocked releases the least recently used idle targets other than keep while
// more than MaxConnectedTargets are connected.
func (e *Exporter) enforceCapLocked(keep *entry) {
	if e.opts.MaxConnectedTargets <= 0 {
		return
	}
	for n := e.connectedLocked(); n > e.opts.MaxConnectedTargets; n-- {
		var lru *entry
		for _, en := range e.entries {
			if en == keep || !en.connected || en.busy > 0 {
				continue
			}
			if lru == nil || en.lastUsed.Before(lru.lastUsed) {
				lru = en
			}
		}
		if lru == nil {
			return // the others are all busy: the cap is restored when they are done
		}
		e.releaseLocked(lru, metrics.DisconnectCap)
	}
}

// releaseLocked marks en released and closes its connections, without waiting for them.
func (e *Exporter) releaseLocked(en *entry, reason string) {
	en.connected = false
	e.opts.Logger.Debug("closing the connections of a target", "target", en.target.Name(), "reason", reason)
	if e.opts.Fleet != nil {
		e.opts.Fleet.countDisconnect(reason)
	}
	en.target.ReleaseConnections()
}

// sweep releases idle targets until Close.
func (e *Exporter) sweep() {
	period := min(max(e.opts.IdleTimeout/4, 10*time.Millisecond), 30*time.Second)
	ticker := time.NewTicker(period)
	defer ticker.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-ticker.C:
		}
		e.mu.Lock()
		now := e.now()
		for _, en := range e.entries {
			if en.connected && en.busy == 0 && now.Sub(en.lastUsed) >= e.opts.IdleTimeout {
				e.releaseLocked(en, metrics.DisconnectIdle)
			}
		}
		e.mu.Unlock()
	}
}
