// Every dashboard of the mixin, each adding itself to grafanaDashboards.
(import 'dbpool.libsonnet')
