// Small helpers shared by the rules and the dashboard: they turn the numbers of _config into
// PromQL and into the words of summaries, descriptions and titles.
{
  // A number for PromQL or prose: 0.8, 0.05, 30 (jsonnet's own toString prints
  // 0.80000000000000004).
  num(x):: '%g' % x,

  // A ratio as a percentage: 0.8 -> '80%'.
  percent(ratio):: '%g%%' % (ratio * 100),

  // Seconds as milliseconds: 0.05 -> '50 ms' (sep '' gives '50ms').
  millis(seconds, sep=' '):: '%g%sms' % [seconds * 1000, sep],

  // A Prometheus duration in words: '5m' -> '5 minutes' ('5 min' when short), '30s' ->
  // '30 seconds'. Compound durations such as '1h30m' are returned as they are.
  words(duration, short=false)::
    local unit = std.substr(duration, std.length(duration) - 1, 1);
    local n = std.substr(duration, 0, std.length(duration) - 1);
    local names = {
      s: ['second', 'seconds', 's'],
      m: ['minute', 'minutes', 'min'],
      h: ['hour', 'hours', 'h'],
      d: ['day', 'days', 'd'],
    };
    if std.objectHas(names, unit) && std.length(n) > 0 && std.all([std.member('0123456789', c) for c in std.stringChars(n)]) then
      '%s %s' % [n, if short then names[unit][2] else if n == '1' then names[unit][0] else names[unit][1]]
    else duration,

  // A vector selector: the metric with the given matchers and _config.dbpoolSelector, without
  // braces when there are none. sel(cfg, 'dbpool_up') -> 'dbpool_up'.
  sel(cfg, metric, matchers=''):: (
    local all = std.filter(function(m) m != '', [cfg.dbpoolSelector, matchers]);
    if all == [] then metric else '%s{%s}' % [metric, std.join(', ', all)]
  ),

  // A paragraph written over several lines (a ||| block) as one line, the way YAML's folded
  // scalars read: the line breaks become spaces.
  prose(text):: std.join(' ', std.split(std.rstripChars(text, '\n'), '\n')),

  // The runbook section for an alert.
  runbook(cfg, anchor):: '%s/docs/runbook.md#%s' % [cfg.runbookURLBase, anchor],

  // Connections the applications on a server may open together, by target: max_connections
  // minus max(reserved slots, adminHeadroomRatio x max_connections rounded up), as the
  // exporter's advice computes its server budget. matchers narrow the server series (the
  // dashboard's variables).
  usableConnections(cfg, matchers='')::
    local u = self;
    local maxConns = 'max by (target) (%s)' % u.sel(cfg, 'dbpool_server_max_connections', matchers);
    local headroom = 'ceil(%s * %s)' % [maxConns, u.num(cfg.adminHeadroomRatio)];
    |||
      %(max)s
      - on (target)
      (
        max by (target) (%(reserved)s) > on (target) %(headroom)s
        or on (target)
        %(headroom)s
      )
    ||| % { max: maxConns, reserved: u.sel(cfg, 'dbpool_server_reserved_connections', matchers), headroom: headroom },

  // What all configured pools on a server may open together, by target: instances x
  // (pool_size + max_overflow) per pool, summed. A pool seen by two sources (activity and app)
  // counts once; a pgxpool in a Go service is one series per process (instance), summed.
  configuredConnections(cfg, matchers='')::
    local m(source) = std.join(', ', std.filter(function(x) x != '', [matchers, 'pool!="dbpool_exporter"', source]));
    |||
      sum by (target) (
        max by (target, pool) (
          max without (instance) (%s)
          or
          sum without (instance) (%s)
        )
      )
    ||| % [self.sel(cfg, 'dbpool_max_connections', m('source!="pgxpool"')), self.sel(cfg, 'dbpool_max_connections', m('source="pgxpool"'))],
}
