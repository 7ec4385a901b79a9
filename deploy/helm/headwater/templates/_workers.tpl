{{/*
Worker pools. With workerPools empty there is one pool, `workers` itself, serving every
function (named <fullname>-worker, selector unchanged, so existing releases upgrade in place).
Otherwise each workerPools entry is a pool whose values start from `workers`: a key of the
entry replaces the same key of `workers`, and `autoscaling` (with its queueDepth and keda
blocks) is merged key by key. sprig's mergeOverwrite is not used: it cannot set false or 0.

Returns JSON {"pools": [{name, resourceName, named, functions, served, values}]}:
  functions  the --functions list (empty: all), served  the functions it runs (for its scaler).
*/}}
{{- define "headwater.workerPools" -}}
{{- $w := .Values.workers }}
{{- $all := list }}
{{- range (.Values.config.Functions | default list) }}
{{- $all = append $all .FunctionName }}
{{- end }}
{{- $base := printf "%s-worker" (include "headwater.fullname" .) }}
{{- $pools := list }}
{{- if not .Values.workerPools }}
{{- $fns := $w.functions | default list }}
{{- $pools = append $pools (dict "name" "default" "resourceName" $base "named" false "functions" $fns "served" (ternary $fns $all (gt (len $fns) 0)) "values" $w) }}
{{- else }}
{{- range $entry := .Values.workerPools }}
{{- $v := deepCopy $w }}
{{- range $key, $value := $entry }}
{{- if eq $key "autoscaling" }}
{{- $a := deepCopy $w.autoscaling }}
{{- range $ak, $av := $value }}
{{- if and (has $ak (list "queueDepth" "keda")) (kindIs "map" $av) }}
{{- $inner := deepCopy (index $a $ak) }}
{{- range $ik, $iv := $av }}
{{- $_ := set $inner $ik $iv }}
{{- end }}
{{- $_ := set $a $ak $inner }}
{{- else }}
{{- $_ := set $a $ak $av }}
{{- end }}
{{- end }}
{{- $_ := set $v "autoscaling" $a }}
{{- else if ne $key "name" }}
{{- $_ := set $v $key $value }}
{{- end }}
{{- end }}
{{- $pools = append $pools (dict "name" $entry.name "resourceName" (printf "%s-%s" $base $entry.name) "named" true "functions" $entry.functions "served" $entry.functions "values" $v) }}
{{- end }}
{{- end }}
{{- toJson (dict "pools" $pools) }}
{{- end }}

{{/*
Labels a pool's pods carry beyond the component's, and the ones its selector adds
(none for the default pool, whose selector predates pools and is immutable).
*/}}
{{- define "headwater.poolSelector" -}}
{{- if .named }}
headwater.io/pool: {{ .name }}
{{- end }}
{{- end }}

{{/*
The pool's worker command line.
*/}}
{{- define "headwater.workerArgs" -}}
{{- $v := .pool.values }}
{{- $args := list "worker" "--config" (include "headwater.configPath" .ctx) "--processes" (int $v.processes) "--metrics-port" (int $v.metricsPort) "--grace-seconds" (int $v.graceSeconds) }}
{{- with .pool.functions }}
{{- $args = concat $args (list "--functions" (join "," .)) }}
{{- end }}
{{- toJson $args }}
{{- end }}

{{/*
Seconds workers/pool.py waits, after the drain's grace period, before it kills a worker
process that has not stopped (`deadline = grace_seconds + 10` in WorkerPool._drain).
*/}}
{{- define "headwater.workerKillMarginSeconds" -}}
10
{{- end }}

{{- define "headwater.validatePools" -}}
{{- if .Values.workers.enabled }}
{{- $pools := (include "headwater.workerPools" . | fromJson).pools }}
{{- $all := list }}
{{- range (.Values.config.Functions | default list) }}
{{- $all = append $all .FunctionName }}
{{- end }}
{{- $names := list }}
{{- $owner := dict }}
{{- range $pool := $pools }}
{{- $label := ternary (printf "workerPools[%s]" $pool.name) "workers" $pool.named }}
{{- if has $pool.name $names }}
{{- fail (printf "workerPools: the name %q is used twice" $pool.name) }}
{{- end }}
{{- $names = append $names $pool.name }}
{{- include "headwater.validateGrace" (dict "name" $label "values" $pool.values "margin" (include "headwater.workerKillMarginSeconds" $)) }}
{{- include "headwater.validatePdb" (dict "name" $label "values" $pool.values) }}
{{- range $fn := $pool.functions }}
{{- if and $all (not (has $fn $all)) }}
{{- fail (printf "%s: function %q is not in config.Functions" $label $fn) }}
{{- end }}
{{- if and $pool.named (hasKey $owner $fn) }}
{{- fail (printf "function %q is in two worker pools (%s and %s): give each function one pool" $fn (get $owner $fn) $pool.name) }}
{{- end }}
{{- $_ := set $owner $fn $pool.name }}
{{- end }}
{{- $a := $pool.values.autoscaling }}
{{- if $a.enabled }}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) }}
{{- fail (printf "%s.autoscaling: minReplicas (%d) is above maxReplicas (%d)" $label (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- end }}
{{- if eq $a.type "hpa" }}
{{- if lt (int $a.minReplicas) 1 }}
{{- fail (printf "%s.autoscaling: an HPA cannot scale to zero (minReplicas 0); use type keda" $label) }}
{{- end }}
{{- if and (not $a.queueDepth.enabled) (not $a.targetCPUUtilizationPercentage) }}
{{- fail (printf "%s.autoscaling: enable queueDepth or set targetCPUUtilizationPercentage" $label) }}
{{- end }}
{{- else }}
{{- if not $pool.served }}
{{- fail (printf "%s.autoscaling: KEDA scales on the queues of the pool's functions, and config.Functions is empty" $label) }}
{{- end }}
{{- if not (include "headwater.kedaRedisAddress" (dict "ctx" $ "pool" $pool)) }}
{{- fail (printf "%s.autoscaling.keda.redisAddress: KEDA cannot read the Redis URL in redis.existingSecret; set it (host:port), or use redis.url / redis.sentinel with redis.auth.existingSecret" $label) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.workerPools }}
{{- range $fn := $all }}
{{- if not (hasKey $owner $fn) }}
{{- fail (printf "function %q is in no worker pool: its invocations would wait forever; add it to one of workerPools" $fn) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Where KEDA reads the queue lengths: host:port of the Redis (or, with Sentinel, the
comma-separated Sentinels). Call with (dict "ctx" $ "pool" $pool).
*/}}
{{- define "headwater.kedaRedisAddress" -}}
{{- $r := .ctx.Values.redis }}
{{- $keda := .pool.values.autoscaling.keda }}
{{- if $keda.redisAddress }}
{{- $keda.redisAddress }}
{{- else if $r.enabled }}
{{- printf "%s.%s.svc:%d" (include "headwater.redisFullname" .ctx) .ctx.Release.Namespace (int $r.service.port) }}
{{- else if $r.existingSecret }}
{{- else if $r.sentinel.enabled }}
{{- join "," $r.sentinel.hosts }}
{{- else }}
{{- $u := urlParse $r.url }}
{{- if contains ":" $u.host }}{{ $u.host }}{{ else }}{{ printf "%s:6379" $u.host }}{{ end }}
{{- end }}
{{- end }}

{{/*
Redis database of the queues, as KEDA's databaseIndex.
*/}}
{{- define "headwater.kedaDatabaseIndex" -}}
{{- $r := .ctx.Values.redis }}
{{- $keda := .pool.values.autoscaling.keda }}
{{- if not (kindIs "invalid" $keda.databaseIndex) }}
{{- int $keda.databaseIndex }}
{{- else if $r.enabled }}0
{{- else if $r.sentinel.enabled }}{{ int $r.sentinel.db }}
{{- else if and $r.url (not $r.existingSecret) }}
{{- $path := trimPrefix "/" (urlParse $r.url).path }}
{{- if regexMatch "^[0-9]+$" $path }}{{ $path }}{{ else }}0{{ end }}
{{- else }}0
{{- end }}
{{- end }}

{{/*
True ("true") when some pool scales with KEDA.
*/}}
{{- define "headwater.anyKeda" -}}
{{- if .Values.workers.enabled }}
{{- range (include "headwater.workerPools" . | fromJson).pools }}
{{- if and .values.autoscaling.enabled (ne .values.autoscaling.type "hpa") }}true{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the TriggerAuthentication of the KEDA triggers ("" when none is needed).
*/}}
{{- define "headwater.kedaAuthName" -}}
{{- if and (include "headwater.anyKeda" .) (or (include "headwater.redisPasswordSecret" .) (include "headwater.redisCaMounted" .)) }}
{{- printf "%s-redis" (include "headwater.fullname" .) }}
{{- end }}
{{- end }}
