package collector

import "time"

// Which targets hold connections: the cap on connected targets and the idle sweeper.

// enforceCapLocked releases the least recently used idle targets other than keep while
// more than MaxConnectedTargets are connected. It returns the targets to close.
func (e *Exporter) enforceCapLocked(keep *entry) []Target {
	if e.opts.MaxConnectedTargets <= 0 {
		return nil
	}
	var victims []Target
	for n := e.connectedLocked(); n > e.opts.MaxConnectedTargets; n-- {
		var lru *entry
		for _, en := range e.entries {
			if en == keep || !en.connected || en.busy > 0 || !e.releasable(en) {
				continue
			}
			if lru == nil || en.lastUsed.Before(lru.lastUsed) {
				lru = en
			}
		}
		if lru == nil {
			break // the others are all busy: the cap is restored when they are done
		}
		if t := e.releaseLocked(lru, releaseCap); t != nil {
			victims = append(victims, t)
		}
	}
	return victims
}

func (e *Exporter) releasable(en *entry) bool { return en.inPlace || e.opts.Reopen != nil }

// releaseLocked marks en released and closes its connections in place, or returns the
// target for the caller to close outside the lock.
func (e *Exporter) releaseLocked(en *entry, reason string) Target {
	en.connected = false
	e.opts.Logger.Debug("closing the connections of a target", "target", en.name, "reason", reason)
	if e.opts.Fleet != nil {
		e.opts.Fleet.countRelease(reason)
	}
	if r, ok := en.target.(ConnectionReleaser); ok {
		r.ReleaseConnections()
		return nil
	}
	t := en.target
	en.target = nil
	return t
}

// closeInBackground closes released targets without holding up the scrape that released
// them; after Close has begun, it closes them at once (Close waits for the background).
func (e *Exporter) closeInBackground(targets []Target) {
	if len(targets) == 0 {
		return
	}
	e.mu.Lock()
	closed := e.closed
	if !closed {
		e.bg.Add(len(targets))
	}
	e.mu.Unlock()
	for _, t := range targets {
		if closed {
			t.Close()
			continue
		}
		go func() {
			defer e.bg.Done()
			t.Close()
		}()
	}
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
		var victims []Target
		now := e.now()
		for _, en := range e.entries {
			if en.connected && en.busy == 0 && e.releasable(en) && now.Sub(en.lastUsed) >= e.opts.IdleTimeout {
				if t := e.releaseLocked(en, releaseIdle); t != nil {
					victims = append(victims, t)
				}
			}
		}
		e.mu.Unlock()
		for _, t := range victims {
			t.Close() // here, not in the background: Close may already be waiting for bg
		}
	}
}
