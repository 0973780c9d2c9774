{{/* Names, labels and the few decisions that several templates share. */}}

{{- define "dbpool-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The fullname leaves room for a StatefulSet pod's "-<ordinal>" and "-dashboard" suffixes. */}}
{{- define "dbpool-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dbpool-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dbpool-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dbpool-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dbpool-exporter.labels" -}}
helm.sh/chart: {{ include "dbpool-exporter.chart" . }}
{{ include "dbpool-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dbpool-exporter
{{- end }}

{{- define "dbpool-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dbpool-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dbpool-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret the pods read: an existing one, the chart's own, or "" when there is none. */}}
{{- define "dbpool-exporter.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if .Values.secret.data }}
{{- include "dbpool-exporter.fullname" . }}
{{- end }}
{{- end }}

{{/*
"true" when the Secret provides the key given as the list's second element (the root context
first): any key of an existing Secret, the keys of secret.data for the chart's own.
*/}}
{{- define "dbpool-exporter.secretEnv" -}}
{{- $root := index . 0 }}
{{- $key := index . 1 }}
{{- if and $key (or $root.Values.secret.existingSecret (hasKey $root.Values.secret.data $key)) }}true{{- end }}
{{- end }}

{{/* Where the pods find their files. */}}
{{- define "dbpool-exporter.configDir" -}}/etc/dbpool-exporter/config{{- end }}
{{- define "dbpool-exporter.secretDir" -}}/etc/dbpool-exporter/secret{{- end }}

{{/* The configuration file as the exporter reads it. */}}
{{- define "dbpool-exporter.configFile" -}}
{{- toYaml .Values.config }}
{{- end }}

{{/*
The target names Prometheus probes, as a JSON list: multiTarget.targets, or every name under
config.targets and config.pgbouncers.
*/}}
{{- define "dbpool-exporter.probeTargets" -}}
{{- $names := list }}
{{- if .Values.multiTarget.targets }}
{{- $names = .Values.multiTarget.targets }}
{{- else }}
{{- range (concat (.Values.config.targets | default list) (.Values.config.pgbouncers | default list)) }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/*
Refuses value combinations that would deploy an exporter with nothing to watch, or Prometheus
scrapes that cannot work. Every message names the values to set.
*/}}
{{- define "dbpool-exporter.validate" -}}
{{- if .Values.config }}
{{- if or .Values.appUrls .Values.poolSettings }}
{{- fail "dbpool-exporter: with config, list app endpoints under config.apps and pool settings under config.pools (appUrls and poolSettings are for one server without config)" }}
{{- end }}
{{- else }}
{{- if .Values.multiTarget.enabled }}
{{- fail "dbpool-exporter: multiTarget.enabled needs config.targets (or config.pgbouncers) naming the targets to probe" }}
{{- end }}
{{- if not (or (include "dbpool-exporter.secretEnv" (list . .Values.secret.dsnKey)) (include "dbpool-exporter.secretEnv" (list . .Values.secret.pgbouncerDsnKey))) }}
{{- fail (printf "dbpool-exporter: nothing to watch: set secret.data.%s (one PostgreSQL server; secret.dsnKey names the key), secret.existingSecret, or config.targets (many)" (default "dsn" .Values.secret.dsnKey)) }}
{{- end }}
{{- if and (not .Values.secret.existingSecret) .Values.secret.pgbouncerDsnKey (not (hasKey .Values.secret.data .Values.secret.pgbouncerDsnKey)) }}
{{- fail (printf "dbpool-exporter: secret.data has no key %q (secret.pgbouncerDsnKey)" .Values.secret.pgbouncerDsnKey) }}
{{- end }}
{{- end }}
{{- if and .Values.multiTarget.enabled (eq (include "dbpool-exporter.probeTargets" . | fromJsonArray | len) 0) }}
{{- fail "dbpool-exporter: multiTarget.enabled, but config lists no targets or pgbouncers and multiTarget.targets is empty" }}
{{- end }}
{{- if and .Values.config .Values.multiTarget.targets }}
{{- $known := list }}
{{- range (concat (.Values.config.targets | default list) (.Values.config.pgbouncers | default list)) }}
{{- $known = append $known .name }}
{{- end }}
{{- range .Values.multiTarget.targets }}
{{- if not (has . $known) }}
{{- fail (printf "dbpool-exporter: multiTarget.targets: %q is not a name under config.targets or config.pgbouncers" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (gt (int .Values.multiTarget.shards) 1) (not .Values.multiTarget.enabled) }}
{{- fail "dbpool-exporter: multiTarget.shards above 1 needs multiTarget.enabled: only probed targets can be split across exporters" }}
{{- end }}
{{- if and .Values.podMonitor.enabled (not .Values.podMonitor.selector) }}
{{- fail "dbpool-exporter: podMonitor.enabled needs podMonitor.selector (the application pods' labels)" }}
{{- end }}
{{- end }}
