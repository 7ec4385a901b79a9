{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "headwater.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already
contains the chart name. Component suffixes (-worker, -poller, -redis) are
appended to it, so it is cut to 52 characters.
*/}}
{{- define "headwater.fullname" -}}
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

{{- define "headwater.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels shared by every resource.
*/}}
{{- define "headwater.labels" -}}
helm.sh/chart: {{ include "headwater.chart" . }}
{{ include "headwater.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: headwater
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "headwater.selectorLabels" -}}
app.kubernetes.io/name: {{ include "headwater.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Per-component labels. Call with (dict "ctx" $ "component" "worker").
*/}}
{{- define "headwater.componentLabels" -}}
{{ include "headwater.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "headwater.componentSelectorLabels" -}}
{{ include "headwater.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "headwater.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "headwater.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "headwater.configMapName" -}}
{{- printf "%s-config" (include "headwater.fullname" .) }}
{{- end }}

{{- define "headwater.redisFullname" -}}
{{- printf "%s-redis" (include "headwater.fullname" .) }}
{{- end }}

{{/*
Image reference: repository[:tag][@digest]. Call with (dict "image" .Values.image "default" "1.2.3").
*/}}
{{- define "headwater.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .default .image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
Path of the config file inside the pods.
*/}}
{{- define "headwater.configPath" -}}
/etc/headwater/headwater.yaml
{{- end }}

{{/*
Checksum of the rendered config, put on the pod template so pods roll when it changes.
*/}}
{{- define "headwater.configChecksum" -}}
{{- include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/*
Environment shared by workers and pollers.
*/}}
{{- define "headwater.commonEnv" -}}
- name: HEADWATER_CONFIG
  value: {{ include "headwater.configPath" . }}
{{- include "headwater.redisEnv" . }}
{{- with .Values.aws.region }}
- name: AWS_REGION
  value: {{ . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.aws.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.aws.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.aws.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.aws.secretAccessKeyKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.aws.sessionTokenKey }}
      optional: true
{{- end }}
{{- with .Values.kafka.bootstrapServers }}
- name: HEADWATER_KAFKA_BOOTSTRAP_SERVERS
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Checks that JSON schema cannot express; rendered (empty) by the config map so
that every install and upgrade runs them.
*/}}
{{- define "headwater.validate" -}}
{{- include "headwater.validateRedis" . }}
{{- include "headwater.validatePools" . }}
{{- if .Values.pollers.enabled }}
{{- include "headwater.validateGrace" (dict "name" "pollers" "values" .Values.pollers "margin" 0) }}
{{- include "headwater.validatePdb" (dict "name" "pollers" "values" .Values.pollers) }}
{{- end }}
{{- end }}

{{/*
The kubelet's grace period must outlast the app's drain plus the margin the process waits
before killing a child that has not stopped. Call with (dict "name" "workers" "values" $v "margin" 10).
*/}}
{{- define "headwater.validateGrace" -}}
{{- $grace := int .values.graceSeconds }}
{{- $needed := add $grace (int .margin) }}
{{- if le (int .values.terminationGracePeriodSeconds) $needed }}
{{- if gt (int .margin) 0 }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must be longer than %s.graceSeconds (%d) + %d s the pool waits before killing a worker that has not stopped (%d): Kubernetes would kill the pod while it is still draining" .name (int .values.terminationGracePeriodSeconds) .name $grace (int .margin) $needed) }}
{{- else }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must be longer than %s.graceSeconds (%d): Kubernetes would kill the pod while it is still draining" .name (int .values.terminationGracePeriodSeconds) .name $grace) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Call with (dict "name" "workers" "values" $v).
*/}}
{{- define "headwater.validatePdb" -}}
{{- $pdb := .values.podDisruptionBudget }}
{{- if and $pdb.enabled (eq (toString $pdb.minAvailable) "<nil>") (eq (toString $pdb.maxUnavailable) "<nil>") }}
{{- fail (printf "%s.podDisruptionBudget: set minAvailable or maxUnavailable" .name) }}
{{- end }}
{{- end }}

{{/*
Largest function Timeout in the config (0 when none is set).
*/}}
{{- define "headwater.maxFunctionTimeout" -}}
{{- $max := 0 }}
{{- range (.Values.config.Functions | default list) }}
{{- $t := int (default 0 .Timeout) }}
{{- if gt $t $max }}{{ $max = $t }}{{ end }}
{{- end }}
{{- $max }}
{{- end }}
