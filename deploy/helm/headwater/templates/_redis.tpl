{{/*
How Headwater (and KEDA) reach Redis. The password is never rendered: Kubernetes reads it from
a Secret into HEADWATER_REDIS_PASSWORD and expands $(HEADWATER_REDIS_PASSWORD) inside
HEADWATER_REDIS_URL when the container starts.
*/}}

{{/*
Name of the Secret holding the Redis password ("" when Headwater sends none).
*/}}
{{- define "headwater.redisPasswordSecret" -}}
{{- $auth := .Values.redis.auth }}
{{- if and .Values.redis.enabled $auth.enabled }}
{{- default (printf "%s-auth" (include "headwater.redisFullname" .)) $auth.existingSecret }}
{{- else if and (not .Values.redis.enabled) $auth.enabled $auth.existingSecret (not .Values.redis.existingSecret) }}
{{- $auth.existingSecret }}
{{- end }}
{{- end }}

{{- define "headwater.redisCaPath" -}}
/etc/headwater/redis-tls
{{- end }}

{{/*
True ("true") when the pods mount the CA of an external Redis's TLS certificate.
*/}}
{{- define "headwater.redisCaMounted" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.tls.enabled .Values.redis.tls.caSecret }}true{{ end }}
{{- end }}

{{/*
userinfo for a URL: ":$(HEADWATER_REDIS_PASSWORD)@" when a password Secret is in use.
*/}}
{{- define "headwater.redisUserinfo" -}}
{{- if include "headwater.redisPasswordSecret" . }}:$(HEADWATER_REDIS_PASSWORD)@{{ end }}
{{- end }}

{{/*
HEADWATER_REDIS_URL as a literal (with the $(HEADWATER_REDIS_PASSWORD) reference), for every
case but redis.existingSecret.
*/}}
{{- define "headwater.redisUrl" -}}
{{- $r := .Values.redis }}
{{- $userinfo := include "headwater.redisUserinfo" . }}
{{- if $r.enabled }}
{{- printf "redis://%s%s.%s.svc:%d/0" $userinfo (include "headwater.redisFullname" .) .Release.Namespace (int $r.service.port) }}
{{- else if $r.sentinel.enabled }}
{{- printf "redis+sentinel://%s%s/%s/%d" $userinfo (join "," $r.sentinel.hosts) $r.sentinel.masterSet (int $r.sentinel.db) }}
{{- else }}
{{- $parts := splitn "://" 2 $r.url }}
{{- $url := printf "%s://%s%s" $parts._0 $userinfo $parts._1 }}
{{- if include "headwater.redisCaMounted" . }}
{{- $url = printf "%s%sssl_ca_certs=%s/%s" $url (ternary "&" "?" (contains "?" $url)) (include "headwater.redisCaPath" .) $r.tls.caKey }}
{{- end }}
{{- $url }}
{{- end }}
{{- end }}

{{/*
Environment entries that give a Headwater process its Redis.
*/}}
{{- define "headwater.redisEnv" -}}
{{- $secret := include "headwater.redisPasswordSecret" . }}
{{- if and (not .Values.redis.enabled) .Values.redis.existingSecret }}
- name: HEADWATER_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretUrlKey }}
{{- else }}
{{- if $secret }}
# Defined before HEADWATER_REDIS_URL: Kubernetes expands $(VAR) only from earlier entries.
- name: HEADWATER_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.redis.auth.existingSecretPasswordKey }}
{{- end }}
- name: HEADWATER_REDIS_URL
  value: {{ include "headwater.redisUrl" . | quote }}
{{- end }}
{{- end }}

{{/*
Checks on the Redis values.
*/}}
{{- define "headwater.validateRedis" -}}
{{- $r := .Values.redis }}
{{- if not $r.enabled }}
{{- if not (or $r.url $r.existingSecret $r.sentinel.enabled) }}
{{- fail "redis.enabled is false: set redis.url, redis.sentinel or redis.existingSecret to point Headwater at an external Redis" }}
{{- end }}
{{- if and $r.sentinel.enabled (not $r.sentinel.hosts) }}
{{- fail "redis.sentinel.enabled needs redis.sentinel.hosts (host:port of each Sentinel)" }}
{{- end }}
{{- if and $r.url (not $r.existingSecret) (not $r.sentinel.enabled) (regexMatch "^[a-z+]+://[^/]*@" $r.url) }}
{{- fail "redis.url must not hold a password (it would be rendered in plain text): put it in the Secret named by redis.auth.existingSecret, or the whole URL in redis.existingSecret" }}
{{- end }}
{{- if $r.tls.enabled }}
{{- if $r.sentinel.enabled }}
{{- fail "redis.tls with redis.sentinel is not supported: Headwater's Sentinel client connects without TLS" }}
{{- end }}
{{- if and $r.url (not $r.existingSecret) (not (hasPrefix "rediss://" $r.url)) }}
{{- fail "redis.tls.enabled needs a rediss:// redis.url" }}
{{- end }}
{{- end }}
{{- else if $r.tls.enabled }}
{{- fail "redis.tls applies to an external Redis (redis.enabled false); the embedded Redis is reached inside the cluster, behind its NetworkPolicy" }}
{{- end }}
{{- end }}
