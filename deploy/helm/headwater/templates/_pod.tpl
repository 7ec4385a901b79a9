{{/*
Pod template shared by the worker and poller Deployments.
Call with (dict "ctx" $ "component" "worker" "values" .Values.workers "args" (list "worker" ...)).
*/}}
{{- define "headwater.podTemplate" -}}
{{- $ctx := .ctx -}}
{{- $v := .values -}}
metadata:
  labels:
    {{- include "headwater.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "headwater.configChecksum" $ctx }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "headwater.serviceAccountName" $ctx }}
  automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automountServiceAccountToken }}
  terminationGracePeriodSeconds: {{ int $v.terminationGracePeriodSeconds }}
  {{- with $ctx.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "headwater.imageRef" (dict "image" $ctx.Values.image "default" $ctx.Chart.AppVersion) | quote }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      args:
        {{- range .args }}
        - {{ . | toString | quote }}
        {{- end }}
        {{- range $v.extraArgs }}
        - {{ . | toString | quote }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ int $v.metricsPort }}
          protocol: TCP
      env:
        {{- include "headwater.commonEnv" $ctx | nindent 8 }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.extraEnvFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.startupProbe }}
      startupProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/headwater
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if include "headwater.redisCaMounted" $ctx }}
        - name: redis-tls
          mountPath: {{ include "headwater.redisCaPath" $ctx }}
          readOnly: true
        {{- end }}
        {{- with $v.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "headwater.configMapName" $ctx }}
    - name: tmp
      emptyDir:
        {{- with $v.tmpSizeLimit }}
        sizeLimit: {{ . }}
        {{- end }}
    {{- if include "headwater.redisCaMounted" $ctx }}
    - name: redis-tls
      secret:
        secretName: {{ $ctx.Values.redis.tls.caSecret }}
        items:
          - key: {{ $ctx.Values.redis.tls.caKey }}
            path: {{ $ctx.Values.redis.tls.caKey }}
    {{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
Metrics Service of a component. Call with (dict "ctx" $ "component" "worker" "values" .Values.workers).
*/}}
{{- define "headwater.metricsService" -}}
{{- $ctx := .ctx -}}
{{- $v := .values -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ printf "%s-%s" (include "headwater.fullname" $ctx) .component }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "headwater.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
    headwater.io/metrics: "true"
  {{- with $v.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $v.service.type }}
  selector:
    {{- include "headwater.componentSelectorLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
  ports:
    - name: metrics
      port: {{ int $v.service.port }}
      targetPort: metrics
      protocol: TCP
{{- end }}

{{/*
PodDisruptionBudget of a component. Call with (dict "ctx" $ "component" "worker" "values" .Values.workers),
plus "name" and "selector" (extra matchLabels) for a worker pool.
*/}}
{{- define "headwater.pdb" -}}
{{- $ctx := .ctx -}}
{{- $pdb := .values.podDisruptionBudget -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ default (printf "%s-%s" (include "headwater.fullname" $ctx) .component) .name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "headwater.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
spec:
  {{- if not (eq (toString $pdb.minAvailable) "<nil>") }}
  minAvailable: {{ $pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "headwater.componentSelectorLabels" (dict "ctx" $ctx "component" .component) | nindent 6 }}
      {{- with .selector }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
{{- end }}
