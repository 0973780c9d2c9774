// Panel builders for the dbpool dashboard: the few panel shapes it uses, in Grafana's
// dashboard JSON model (schemaVersion 39), with every query on the ${datasource} variable.
// Panels carry only their size (w, h); layout() below places them.
local datasource = { type: 'prometheus', uid: '${datasource}' };

{
  datasource:: datasource,

  // A range query.
  query(expr, legend='', refId='A'):: {
    datasource: datasource,
    editorMode: 'code',
    expr: expr,
    legendFormat: legend,
    refId: refId,
    range: true,
  },

  // An instant query, for stats, bar gauges and tables.
  instantQuery(expr, legend='', refId='A'):: self.query(expr, legend, refId) + {
    instant: true,
    range: false,
  },

  // Range queries from [expr, legend] pairs, with refIds A, B, C...
  queries(pairs):: [
    self.query(pairs[i][0], pairs[i][1], std.char(std.codepoint('A') + i))
    for i in std.range(0, std.length(pairs) - 1)
  ],

  // Absolute thresholds: the base colour, then [value, colour] steps.
  thresholds(base, steps=[]):: {
    mode: 'absolute',
    steps: [{ color: base, value: null }] + [{ color: s[1], value: s[0] } for s in steps],
  },

  // The link from a panel to the runbook of the alert it shows. Grafana's schema gives panel
  // links the fields of dashboard links.
  runbookLink(title, url):: {
    asDropdown: false,
    icon: 'doc',
    includeVars: false,
    keepTime: false,
    tags: [],
    targetBlank: true,
    title: 'Runbook: ' + title,
    tooltip: '',
    type: 'link',
    url: url,
  },

  // Value mappings of a 0/1 series: 0 red, 1 green, or the other way round.
  bool(zero, one, zeroColor='red', oneColor='green'):: [{
    options: {
      '0': { color: zeroColor, index: 0, text: zero },
      '1': { color: oneColor, index: 1, text: one },
    },
    type: 'value',
  }],

  // Series overrides, matched on the end of the legend.
  dashed(regex):: self.lineStyle(regex, { dash: [10, 10], fill: 'dash' }),
  dotted(regex):: self.lineStyle(regex, { dash: [0, 10], fill: 'dot' }),
  lineStyle(regex, style):: {
    matcher: { id: 'byRegexp', options: regex },
    properties: [{ id: 'custom.lineStyle', value: style }, { id: 'custom.fillOpacity', value: 0 }],
  },
  fixedColor(regex, color):: {
    matcher: { id: 'byRegexp', options: regex },
    properties: [{ id: 'color', value: { fixedColor: color, mode: 'fixed' } }],
  },

  local panel(type, title, description, w, h, targets, links) = {
    datasource: datasource,
    description: description,
    title: title,
    type: type,
    targets: targets,
    gridPos: { w: w, h: h },
  } + (if links == [] then {} else { links: links }),

  row(title, collapsed=false, panels=[]):: {
    collapsed: collapsed,
    gridPos: { w: 24, h: 1 },
    panels: panels,
    title: title,
    type: 'row',
  },

  // A time series. Counts of connections (unit short) get no decimals and ratios (unit
  // percentunit) stop at 1. Threshold steps are drawn as lines and areas.
  timeseries(title,
             description,
             unit,
             targets,
             w,
             h=8,
             steps=[],
             links=[],
             overrides=[],
             stacked=false,
             legendCalcs=['mean', 'max', 'lastNotNull'])::
    panel('timeseries', title, description, w, h, targets, links) + {
      fieldConfig: {
        defaults: {
                    color: { mode: 'palette-classic' },
                    custom: {
                      axisBorderShow: false,
                      axisCenteredZero: false,
                      axisColorMode: 'text',
                      axisLabel: '',
                      axisPlacement: 'auto',
                      barAlignment: 0,
                      drawStyle: 'line',
                      fillOpacity: if stacked then 60 else 10,
                      gradientMode: 'none',
                      hideFrom: { legend: false, tooltip: false, viz: false },
                      insertNulls: false,
                      lineInterpolation: 'linear',
                      lineWidth: 1,
                      pointSize: 4,
                      scaleDistribution: { type: 'linear' },
                      showPoints: 'never',
                      spanNulls: false,
                      stacking: { group: 'A', mode: if stacked then 'normal' else 'none' },
                      thresholdsStyle: { mode: if steps == [] then 'off' else 'line+area' },
                    },
                    unit: unit,
                    thresholds: $.thresholds('transparent', steps),
                    min: 0,
                  } + (if unit == 'short' then { decimals: 0 } else {})
                  + (if unit == 'percentunit' then { max: 1 } else {}),
        overrides: overrides,
      },
      options: {
        legend: { calcs: legendCalcs, displayMode: 'table', placement: 'bottom', showLegend: true },
        tooltip: { mode: 'multi', sort: 'desc' },
      },
    },

  // A single value, coloured by its thresholds (textMode 'name' shows the legend instead).
  stat(title,
       description,
       unit,
       expr,
       w,
       h=4,
       legend='',
       base='green',
       steps=[],
       mappings=[],
       decimals=null,
       links=[],
       textMode='auto')::
    panel('stat', title, description, w, h, [self.instantQuery(expr, legend)], links) + {
      fieldConfig: {
        defaults: {
          color: { mode: 'thresholds' },
          mappings: mappings,
          unit: unit,
          thresholds: $.thresholds(base, steps),
        } + (if decimals == null then {} else { decimals: decimals }),
        overrides: [],
      },
      options: {
        colorMode: if textMode == 'name' then 'none' else 'background',
        graphMode: 'none',
        justifyMode: 'auto',
        orientation: 'auto',
        reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
        percentChangeColorMode: 'standard',
        showPercentChange: false,
        textMode: textMode,
        wideLayout: true,
      },
    },

  // The labels of an info metric's series as a table, one row per series; hide lists the
  // columns left out.
  table(title, description, expr, hide, sortBy, w, h)::
    panel('table', title, description, w, h, [self.instantQuery(expr) + { format: 'table' }], []) + {
      fieldConfig: {
        defaults: {
          custom: { align: 'auto', cellOptions: { type: 'auto' }, inspect: false },
          mappings: [],
          thresholds: $.thresholds('green'),
        },
        overrides: [],
      },
      options: {
        cellHeight: 'sm',
        footer: { countRows: false, reducer: ['sum'], show: false },
        frameIndex: 0,
        showHeader: true,
        sortBy: [{ desc: false, displayName: sortBy }],
      },
      transformations: [{
        id: 'organize',
        options: {
          excludeByName: { [column]: true for column in hide },
          indexByName: {},
          renameByName: {},
        },
      }],
    },

  // Horizontal bars, one per series, of an instant query.
  bargauge(title, description, unit, expr, legend, w, h=8, steps=[], links=[])::
    panel('bargauge', title, description, w, h, [self.instantQuery(expr, legend)], links) + {
      fieldConfig: {
        defaults: {
          color: { mode: 'thresholds' },
          mappings: [],
          unit: unit,
          thresholds: $.thresholds('green', steps),
          min: 0,
        },
        overrides: [],
      },
      options: {
        displayMode: 'gradient',
        legend: { calcs: [], displayMode: 'list', placement: 'bottom', showLegend: false },
        maxVizHeight: 300,
        minVizHeight: 16,
        minVizWidth: 8,
        namePlacement: 'auto',
        orientation: 'horizontal',
        reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
        showUnfilled: true,
        sizing: 'auto',
        valueMode: 'color',
      },
    },

  // A 0/1 series over time as coloured bands.
  stateTimeline(title, description, expr, legend, mappings, w, h)::
    panel('state-timeline', title, description, w, h, [self.query(expr, legend)], []) + {
      fieldConfig: {
        defaults: {
          color: { mode: 'thresholds' },
          custom: { fillOpacity: 80, lineWidth: 0 },
          mappings: mappings,
          thresholds: $.thresholds('red', [[1, 'green']]),
        },
        overrides: [],
      },
      options: {
        alignValue: 'left',
        legend: { calcs: [], displayMode: 'list', placement: 'bottom', showLegend: false },
        mergeValues: true,
        rowHeight: 0.9,
        showValue: 'auto',
        tooltip: { mode: 'single', sort: 'none' },
      },
    },

  // Places panels left to right in Grafana's 24 columns, starting a new line when a panel does
  // not fit and below every row. The panels of a collapsed row are placed as if the row were
  // open (where Grafana puts them when it is opened) and take no room while it is closed.
  layout(panels)::
    local place(state, p) =
      local newLine = state.x + p.gridPos.w > 24 || p.type == 'row';
      local x = if newLine then 0 else state.x;
      local y = if newLine then state.y + state.lineH else state.y;
      local placed = p { gridPos+: { x: x, y: y } };
      local inner = if p.type == 'row' && p.collapsed then
        std.foldl(place, p.panels, { x: 0, y: y + 1, lineH: 0, out: [] }).out
      else p.panels;
      local final = if p.type == 'row' then placed { panels: inner } else placed;
      {
        x: if p.type == 'row' then 0 else x + p.gridPos.w,
        y: if p.type == 'row' then y + 1 else y,
        lineH: if p.type == 'row' then 0 else std.max(if newLine then 0 else state.lineH, p.gridPos.h),
        out: state.out + [final],
      };
    std.foldl(place, panels, { x: 0, y: 0, lineH: 0, out: [] }).out,
}
