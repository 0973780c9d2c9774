{{/* The exporter's pod, shared by the Deployment (one exporter) and the StatefulSet (shards). */}}

{{- define "dbpool-exporter.args" -}}
- {{ printf "--web.listen-address=:%v" .Values.service.port | quote }}
- {{ printf "--log.level=%s" .Values.logLevel | quote }}
- {{ printf "--log.format=%s" .Values.logFormat | quote }}
{{- if .Values.config }}
- {{ printf "--config.file=%s/config.yml" (include "dbpool-exporter.configDir" .) | quote }}
{{- else }}
- {{ printf "--pool.name=%s" .Values.pool.name | quote }}
{{- with .Values.pool.applicationName }}
- {{ printf "--pool.application-name=%s" . | quote }}
{{- end }}
{{- with .Values.pool.applicationNameRegex }}
- {{ printf "--pool.application-name-regex=%s" . | quote }}
{{- end }}
{{- with .Values.pool.user }}
- {{ printf "--pool.user=%s" . | quote }}
{{- end }}
{{- with .Values.pool.database }}
- {{ printf "--pool.database=%s" . | quote }}
{{- end }}
- {{ printf "--pool.instances=%v" .Values.pool.instances | quote }}
{{- range .Values.appUrls }}
- {{ printf "--app.url=%s" . | quote }}
{{- end }}
{{- end }}
{{- if .Values.multiTarget.enabled }}
- "--no-metrics.scrape-targets"
- {{ printf "--target.max-connected=%v" .Values.multiTarget.maxConnected | quote }}
{{- end }}
{{- with .Values.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "dbpool-exporter.env" -}}
{{- $secret := include "dbpool-exporter.secretName" . }}
{{- if not .Values.config }}
{{- if include "dbpool-exporter.secretEnv" (list . .Values.secret.dsnKey) }}
- name: DATA_SOURCE_NAME
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secret.dsnKey }}
{{- end }}
{{- if include "dbpool-exporter.secretEnv" (list . .Values.secret.pgbouncerDsnKey) }}
- name: PGBOUNCER_DSN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secret.pgbouncerDsnKey }}
{{- end }}
{{- range $name, $value := .Values.poolSettings }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "dbpool-exporter.podTemplate" -}}
{{- $secret := include "dbpool-exporter.secretName" . -}}
metadata:
  labels:
    {{- include "dbpool-exporter.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $ownSecret := and .Values.secret.data (not .Values.secret.existingSecret) }}
  {{- if or .Values.podAnnotations (and .Values.restartOnConfigChange (or .Values.config $ownSecret)) }}
  annotations:
    {{- if and .Values.config .Values.restartOnConfigChange }}
    checksum/config: {{ include "dbpool-exporter.configFile" . | sha256sum }}
    {{- end }}
    {{- if and $ownSecret .Values.restartOnConfigChange }}
    {{- /* Variables from a Secret change only when the pod restarts. */}}
    checksum/secret: {{ toJson .Values.secret.data | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  serviceAccountName: {{ include "dbpool-exporter.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: exporter
      image: {{ include "dbpool-exporter.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        {{- include "dbpool-exporter.args" . | nindent 8 }}
      {{- with (include "dbpool-exporter.env" .) }}
      env:
        {{- . | nindent 8 }}
      {{- end }}
      {{- with .Values.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.service.port }}
          protocol: TCP
      {{- with .Values.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      {{- if or .Values.config $secret .Values.extraVolumeMounts }}
      volumeMounts:
        {{- if .Values.config }}
        - name: config
          mountPath: {{ include "dbpool-exporter.configDir" . }}
          readOnly: true
        {{- end }}
        {{- if $secret }}
        - name: secret
          mountPath: {{ include "dbpool-exporter.secretDir" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
  {{- if or .Values.config $secret .Values.extraVolumes }}
  volumes:
    {{- if .Values.config }}
    - name: config
      configMap:
        name: {{ include "dbpool-exporter.fullname" . }}
    {{- end }}
    {{- if $secret }}
    - name: secret
      secret:
        secretName: {{ $secret }}
        defaultMode: 0440
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
