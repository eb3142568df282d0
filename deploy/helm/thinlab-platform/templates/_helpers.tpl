{{- define "thinlab.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "thinlab.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "thinlab.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: platform
{{- end -}}

{{/* The chart's own Secret. */}}
{{- define "thinlab.secret" -}}{{ include "thinlab.fullname" . }}{{- end -}}

{{/* A value kept across upgrades: the given one, else the one in the
     release's Secret, else a new random one. */}}
{{- define "thinlab.keep" -}}
{{- $ctx := index . 0 -}}{{- $key := index . 1 -}}{{- $given := index . 2 -}}
{{- if $given -}}
{{- $given -}}
{{- else -}}
{{- $old := lookup "v1" "Secret" $ctx.Release.Namespace (include "thinlab.secret" $ctx) -}}
{{- if and $old (index ($old.data | default dict) $key) -}}
{{- index $old.data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "thinlab.bundledDB" -}}{{ include "thinlab.fullname" . }}-postgresql{{- end -}}

{{/* "true" when the bundled PostgreSQL serves: enabled and no external
     database given (an external one wins). */}}
{{- define "thinlab.useBundled" -}}
{{- if and .Values.database.bundled.enabled (not (or .Values.database.external.url .Values.database.external.existingSecret)) -}}true{{- end -}}
{{- end -}}
