{{/* Names ---------------------------------------------------------------------------------- */}}
{{- define "farm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "farm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "farm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "farm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels: call with (dict "root" $ "component" "api") and optionally "pool" */}}
{{- define "farm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "farm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .pool }}
manim-render-farm/pool: {{ . }}
{{- end }}
{{- end -}}

{{- define "farm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: manim-render-farm
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "farm.selectorLabels" . }}
{{- end -}}

{{/* Images: call with (list $ "api"|"worker"|"workerGpu") */}}
{{- define "farm.image" -}}
{{- $root := index . 0 -}}
{{- $img := index $root.Values.images (index . 1) -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Pod metadata extras: call with (list $ .component-values); global ones first, then the component's. */}}
{{- define "farm.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $own := index . 1 -}}
{{- $out := merge (deepCopy ($own.podAnnotations | default dict)) (deepCopy ($root.Values.podAnnotations | default dict)) -}}
{{- with $out -}}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{- define "farm.podLabels" -}}
{{- $root := index . 0 -}}
{{- $own := index . 1 -}}
{{- $out := merge (deepCopy ($own.podLabels | default dict)) (deepCopy ($root.Values.podLabels | default dict)) -}}
{{- with $out -}}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{- define "farm.priorityClassName" -}}
{{- $root := index . 0 -}}
{{- $own := index . 1 -}}
{{- default $root.Values.priorityClassName $own.priorityClassName -}}
{{- end -}}

{{/* Settings -------------------------------------------------------------------------------- */}}
{{- define "farm.evaluationEnabled" -}}
{{- if .Values.evaluation.enabled -}}true{{- end -}}
{{- end -}}

{{/* The ConfigMap's data: the non-secret FARM_* variables. */}}
{{- define "farm.configData" -}}
{{- $c := .Values.config -}}
{{- $s3Endpoint := $c.s3Endpoint -}}
{{- $s3Secure := $c.s3Secure -}}
{{- if .Values.evaluation.enabled -}}
{{- $s3Endpoint = printf "%s-minio:9000" (include "farm.fullname" .) -}}
{{- $s3Secure = false -}}
{{- end -}}
{{- if not $s3Endpoint -}}
{{- fail "config.s3Endpoint is required (host:port of your S3/MinIO), or set evaluation.enabled=true for an in-cluster MinIO" -}}
{{- end -}}
FARM_S3_ENDPOINT: {{ $s3Endpoint | quote }}
FARM_S3_BUCKET: {{ $c.s3Bucket | quote }}
FARM_S3_SECURE: {{ $s3Secure | toString | quote }}
FARM_S3_REGION: {{ $c.s3Region | quote }}
{{- with $c.s3PublicEndpoint }}
FARM_S3_PUBLIC_ENDPOINT: {{ . | quote }}
{{- end }}
FARM_RESULT_URL_EXPIRY_SECONDS: {{ $c.resultUrlExpirySeconds | toString | quote }}
FARM_WORKER_METRICS_PORT: "9101"
FARM_SCHEDULER_METRICS_PORT: "9102"
FARM_LOG_LEVEL: {{ $c.logLevel | quote }}
FARM_LOG_FORMAT: {{ $c.logFormat | quote }}
FARM_SANDBOX: {{ .Values.workerSandbox.mode | quote }}
FARM_CHUNK_TIMEOUT_SECONDS: {{ $c.chunkTimeoutSeconds | toString | quote }}
FARM_CHUNK_MEMORY_MB: {{ $c.chunkMemoryMb | toString | quote }}
FARM_CHUNK_MAX_DISK_MB: {{ $c.chunkMaxDiskMb | toString | quote }}
FARM_CHUNK_MAX_PROCESSES: {{ $c.chunkMaxProcesses | toString | quote }}
FARM_WEBHOOK_ALLOWLIST: {{ join "," $c.webhookAllowlist | quote }}
{{- range $k, $v := $c.extra }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{/* The Secret's stringData: the four credentials (only when no existingSecret). */}}
{{- define "farm.secretData" -}}
{{- $s := .Values.secrets -}}
{{- $full := include "farm.fullname" . -}}
{{- $db := $s.databaseUrl -}}
{{- $redis := $s.redisUrl -}}
{{- $ak := $s.s3AccessKey -}}
{{- $sk := $s.s3SecretKey -}}
{{- if .Values.evaluation.enabled -}}
{{- $pg := .Values.evaluation.postgres -}}
{{- /* Fully qualified: KEDA connects from its own namespace with the same URLs. */ -}}
{{- $db = default (printf "postgresql://%s:%s@%s-postgres.%s.svc:5432/%s" $pg.user $pg.password $full .Release.Namespace $pg.database) $db -}}
{{- $redis = default (printf "redis://%s-redis.%s.svc:6379/0" $full .Release.Namespace) $redis -}}
{{- $ak = default .Values.evaluation.minio.accessKey $ak -}}
{{- $sk = default .Values.evaluation.minio.secretKey $sk -}}
{{- end -}}
{{- $missing := list -}}
{{- if not $db }}{{ $missing = append $missing "secrets.databaseUrl" }}{{ end -}}
{{- if not $redis }}{{ $missing = append $missing "secrets.redisUrl" }}{{ end -}}
{{- if not $ak }}{{ $missing = append $missing "secrets.s3AccessKey" }}{{ end -}}
{{- if not $sk }}{{ $missing = append $missing "secrets.s3SecretKey" }}{{ end -}}
{{- if $missing -}}
{{- fail (printf "missing credentials: set secrets.existingSecret (a Secret with FARM_DATABASE_URL, FARM_REDIS_URL, FARM_S3_ACCESS_KEY, FARM_S3_SECRET_KEY) or %s; evaluation.enabled=true fills them for an in-cluster try" (join ", " $missing)) -}}
{{- end -}}
FARM_DATABASE_URL: {{ $db | quote }}
FARM_REDIS_URL: {{ $redis | quote }}
FARM_S3_ACCESS_KEY: {{ $ak | quote }}
FARM_S3_SECRET_KEY: {{ $sk | quote }}
{{- end -}}

{{- define "farm.secretName" -}}
{{- default (printf "%s-credentials" (include "farm.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Pod annotations that roll pods when settings or credentials change. */}}
{{- define "farm.checksums" -}}
checksum/config: {{ include "farm.configData" . | sha256sum }}
{{- if .Values.secrets.existingSecret }}
{{- /* Rotating the data of an existing Secret does not show here: rename it, or restart the pods. */}}
checksum/secret: {{ printf "existing:%s" .Values.secrets.existingSecret | sha256sum }}
{{- else }}
checksum/secret: {{ include "farm.secretData" . | sha256sum }}
{{- end }}
{{- end -}}

{{/* envFrom for every farm container: settings and credentials. */}}
{{- define "farm.envFrom" -}}
- configMapRef:
    name: {{ include "farm.fullname" . }}-config
- secretRef:
    name: {{ include "farm.secretName" . }}
{{- end -}}

{{/* Scratch volumes (read-only root): /tmp, the Prometheus multiprocess dir, the render scratch. */}}
{{- define "farm.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
- name: prometheus
  emptyDir:
    sizeLimit: 128Mi
- name: scratch
  emptyDir:
    sizeLimit: {{ .sizeLimit | default "1Gi" }}
{{- end -}}

{{- define "farm.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: prometheus
  mountPath: /var/lib/farm/prometheus
- name: scratch
  mountPath: /var/lib/farm/scratch
{{- end -}}

{{- define "farm.scratchEnv" -}}
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /var/lib/farm/scratch
- name: PROMETHEUS_MULTIPROC_DIR
  value: /var/lib/farm/prometheus
{{- end -}}

{{/* Deep-merge .src into .dst in place (unlike mergeOverwrite, false/0/"" in .src win). */}}
{{- define "farm.deepMerge" -}}
{{- $dst := .dst -}}
{{- range $k, $v := .src -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $dst $k)) -}}
{{- include "farm.deepMerge" (dict "dst" (get $dst $k) "src" $v) -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The enabled worker pools, merged over workerDefaults, as JSON {name: pool}. */}}
{{- define "farm.pools" -}}
{{- $pools := dict -}}
{{- range $name, $values := .Values.workers -}}
{{- $pool := deepCopy $.Values.workerDefaults -}}
{{- include "farm.deepMerge" (dict "dst" $pool "src" (deepCopy $values)) -}}
{{- if $pool.enabled -}}
{{- $_ := set $pools $name $pool -}}
{{- end -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{/* Autoscaling mode: keda | hpa | "" */}}
{{- define "farm.autoscalingMode" -}}
{{- if and .Values.autoscaling.keda.enabled .Values.autoscaling.hpa.enabled -}}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are exclusive: pick one" -}}
{{- end -}}
{{- if .Values.autoscaling.keda.enabled -}}keda{{- else if .Values.autoscaling.hpa.enabled -}}hpa{{- end -}}
{{- end -}}

{{/* NetworkPolicy egress rules to the backing services: call with (list $ "postgres"|"redis"|"s3") */}}
{{- define "farm.egressTo" -}}
{{- $root := index . 0 -}}
{{- $svc := index . 1 -}}
{{- $np := index $root.Values.networkPolicy $svc -}}
{{- $port := $np.port -}}
{{- $to := $np.to -}}
{{- if and (not $to) (not $np.anyDestination) (not $root.Values.evaluation.enabled) -}}
{{- fail (printf "networkPolicy.%s.to is empty (set it, or networkPolicy.%s.anyDestination: true)" $svc $svc) -}}
{{- end -}}
{{- if $root.Values.evaluation.enabled -}}
{{- $port = get (dict "postgres" 5432 "redis" 6379 "s3" 9000) $svc -}}
{{- $to = list (dict "podSelector" (dict "matchLabels" (fromYaml (include "farm.selectorLabels" (dict "root" $root "component" (printf "evaluation-%s" $svc)))))) -}}
{{- end -}}
- ports:
    - protocol: TCP
      port: {{ $port }}
  {{- with $to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "farm.dnsEgress" -}}
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
  {{- with .Values.networkPolicy.dns }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Quantities ------------------------------------------------------------------------------ */}}
{{/* A memory/storage quantity ("6Gi", "512Mi", "1G", 1073741824) in MiB (float, as a string). */}}
{{- define "farm.mebibytes" -}}
{{- $q := toString . -}}
{{- $num := regexFind "^[0-9.]+" $q -}}
{{- $unit := trimPrefix $num $q -}}
{{- $factor := get (dict "" 9.5367431640625e-07 "Ki" 0.0009765625 "Mi" 1.0 "Gi" 1024.0 "Ti" 1048576.0 "k" 0.00095367431640625 "M" 0.95367431640625 "G" 953.67431640625 "T" 953674.31640625) $unit -}}
{{- if or (not $num) (kindIs "invalid" $factor) -}}
{{- fail (printf "cannot read the quantity %q (use Ki, Mi, Gi, Ti, k, M, G, T or bytes)" $q) -}}
{{- end -}}
{{- mulf (float64 $num) $factor -}}
{{- end -}}

{{/* A CPU quantity ("500m", "2", 1.5) in millicores (float, as a string). */}}
{{- define "farm.millicores" -}}
{{- $q := toString . -}}
{{- if hasSuffix "m" $q -}}
{{- float64 (trimSuffix "m" $q) -}}
{{- else -}}
{{- mulf (float64 $q) 1000 -}}
{{- end -}}
{{- end -}}

{{/* Worker pools ---------------------------------------------------------------------------- */}}
{{/* Everything derived for one pool, as JSON: call with (list $ name pool). Fails the render
     on settings that contradict each other, naming the pool and the field. */}}
{{- define "farm.poolPlan" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $pool := index . 2 -}}
{{- $c := $root.Values.config -}}
{{- $where := printf "workers.%s" $name -}}
{{- /* The sandbox: top-level workerSandbox, overridden by the pool's own fields. */ -}}
{{- $sb := omit (deepCopy $root.Values.workerSandbox) "gpuPools" -}}
{{- if gt (int $pool.gpu) 0 -}}
{{- include "farm.deepMerge" (dict "dst" $sb "src" (deepCopy ($root.Values.workerSandbox.gpuPools | default dict))) -}}
{{- end -}}
{{- include "farm.deepMerge" (dict "dst" $sb "src" (deepCopy ($pool.workerSandbox | default dict))) -}}
{{- $bwrap := and $pool.sandbox (eq $sb.mode "bwrap") -}}
{{- if and $bwrap (eq (toString $sb.procMount) "Unmasked") (ne (toString $sb.hostUsers) "false") -}}
{{- fail (printf "%s: procMount Unmasked needs a pod user namespace (hostUsers: false); Kubernetes refuses it otherwise. Set %s.workerSandbox.procMount: \"\" or hostUsers: false" $where $where) -}}
{{- end -}}
{{- $rendersScenes := false -}}
{{- range $pool.queues -}}
{{- if hasPrefix "render." . -}}{{- $rendersScenes = true -}}{{- end -}}
{{- end -}}
{{- if and $rendersScenes (lt (int $pool.terminationGracePeriodSeconds) (add (int $c.chunkTimeoutSeconds) 30 | int)) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must be at least config.chunkTimeoutSeconds + 30 (%d): a chunk in flight must be able to finish on a warm shutdown" $where $pool.terminationGracePeriodSeconds (add (int $c.chunkTimeoutSeconds) 30)) -}}
{{- end -}}
{{- $a := $pool.autoscaling -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "%s.autoscaling: minReplicas (%v) is greater than maxReplicas (%v)" $where $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- /* Size the pod from its slots. */ -}}
{{- $slot := $pool.slot | default dict -}}
{{- $over := $pool.overhead | default dict -}}
{{- $slotMem := $slot.memoryMb -}}
{{- if kindIs "invalid" $slotMem }}{{ $slotMem = $c.chunkMemoryMb }}{{ end -}}
{{- $slotDisk := $slot.diskMb -}}
{{- if kindIs "invalid" $slotDisk }}{{ $slotDisk = $c.chunkMaxDiskMb }}{{ end -}}
{{- $n := float64 $pool.concurrency -}}
{{- $cpuM := addf (mulf $n (float64 ($slot.cpu | default 0)) 1000) (mulf (float64 ($over.cpu | default 0)) 1000) | ceil | int -}}
{{- $memMi := addf (mulf $n (float64 $slotMem)) (float64 ($over.memoryMb | default 0)) | ceil | int -}}
{{- $scratchMi := addf (mulf $n (float64 $slotDisk)) (float64 ($over.diskMb | default 0)) | ceil | int -}}
{{- $scratchMi = max $scratchMi 64 | int -}}
{{- /* tmp (256Mi) + Prometheus files (128Mi) + container logs and writable layer (256Mi). */ -}}
{{- $ephMi := add $scratchMi 640 | int -}}
{{- $derived := dict
      "requests" (dict "cpu" (printf "%dm" $cpuM) "memory" (printf "%dMi" $memMi) "ephemeral-storage" (printf "%dMi" $ephMi))
      "limits" (dict "cpu" (printf "%dm" (mul $cpuM 2)) "memory" (printf "%dMi" $memMi) "ephemeral-storage" (printf "%dMi" $ephMi)) -}}
{{- $res := deepCopy $derived -}}
{{- include "farm.deepMerge" (dict "dst" $res "src" (deepCopy ($pool.resources | default dict))) -}}
{{- if lt (include "farm.mebibytes" $res.limits.memory | float64) (float64 $memMi) -}}
{{- fail (printf "%s.resources.limits.memory (%v) is below concurrency x slot memory + overhead (%dMi): the pod's jails could use more than the pod may" $where $res.limits.memory $memMi) -}}
{{- end -}}
{{- if lt (include "farm.mebibytes" (index $res.limits "ephemeral-storage") | float64) (float64 $ephMi) -}}
{{- fail (printf "%s.resources.limits.ephemeral-storage (%v) is below the render scratch (concurrency x slot disk + overhead) plus /tmp (%dMi)" $where (index $res.limits "ephemeral-storage") $ephMi) -}}
{{- end -}}
{{- if lt (include "farm.millicores" $res.requests.cpu | float64) (float64 $cpuM) -}}
{{- fail (printf "%s.resources.requests.cpu (%v) is below concurrency x slot cpu + overhead (%dm)" $where $res.requests.cpu $cpuM) -}}
{{- end -}}
{{- $gpu := int $pool.gpu -}}
{{- if gt $gpu 0 -}}
{{- $_ := set $res.requests "nvidia.com/gpu" $gpu -}}
{{- $_ := set $res.limits "nvidia.com/gpu" $gpu -}}
{{- end -}}
{{- /* What the pool's jails are told, where it differs from the shared ConfigMap. */ -}}
{{- $env := list -}}
{{- if ne $sb.mode $root.Values.workerSandbox.mode -}}
{{- $env = append $env (dict "name" "FARM_SANDBOX" "value" $sb.mode) -}}
{{- end -}}
{{- if $rendersScenes -}}
{{- if ne (int $slotMem) (int $c.chunkMemoryMb) -}}
{{- $env = append $env (dict "name" "FARM_CHUNK_MEMORY_MB" "value" (toString $slotMem)) -}}
{{- end -}}
{{- if ne (int $slotDisk) (int $c.chunkMaxDiskMb) -}}
{{- $env = append $env (dict "name" "FARM_CHUNK_MAX_DISK_MB" "value" (toString $slotDisk)) -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "sandbox" $sb "bwrap" $bwrap "resources" $res "scratchMi" $scratchMi "env" $env "rendersScenes" $rendersScenes) -}}
{{- end -}}

{{/* KEDA: the steps a pool's queues stand for, as a SQL condition on steps s JOIN jobs j.
     Mirrors workers/routing.py queue_for(): plan and chunk run on render.<quality>, the stitch on
     `stitch`. Empty when no queue of the pool is backed by the steps table (webhooks). */}}
{{- define "farm.stepsCondition" -}}
{{- $qualities := list -}}
{{- $stitch := false -}}
{{- range . -}}
{{- if hasPrefix "render." . -}}
{{- $qualities = append $qualities (printf "'%s'" (trimPrefix "render." .)) -}}
{{- else if eq . "stitch" -}}
{{- $stitch = true -}}
{{- end -}}
{{- end -}}
{{- $parts := list -}}
{{- if $qualities -}}
{{- $parts = append $parts (printf "(s.kind IN ('plan', 'chunk') AND j.quality IN (%s))" (join ", " $qualities)) -}}
{{- end -}}
{{- if $stitch -}}
{{- $parts = append $parts "s.kind = 'stitch'" -}}
{{- end -}}
{{- join " OR " $parts -}}
{{- end -}}

{{/* The query KEDA polls: steps queued (pending, published to Celery or not yet) or running
     under a live lease, of jobs still in progress and not held over their user's limit.
     tests/test_helm_chart.py runs it against the migrated schema. */}}
{{- define "farm.stepsQuery" -}}
SELECT count(*) FROM steps s JOIN jobs j ON j.id = s.job_id WHERE j.status IN ('queued', 'running') AND j.held_limit IS NULL AND (s.status = 'pending' OR (s.status = 'running' AND s.lease_until > now())) AND ({{ include "farm.stepsCondition" . }})
{{- end -}}

{{/* KEDA's view of Redis (for queues without a steps row): as JSON {address, db, tls, password}.
     From FARM_REDIS_URL when the chart writes it, else from autoscaling.keda.redis. */}}
{{- define "farm.kedaRedis" -}}
{{- $k := .Values.autoscaling.keda.redis -}}
{{- $url := "" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- $url = (include "farm.secretData" . | fromYaml).FARM_REDIS_URL -}}
{{- end -}}
{{- $out := dict -}}
{{- if $url -}}
{{- $u := urlParse $url -}}
{{- $host := $u.host -}}
{{- if not (regexMatch ":[0-9]+$" $host) }}{{ $host = printf "%s:6379" $host }}{{ end -}}
{{- $db := trimPrefix "/" $u.path | default "0" -}}
{{- $tls := eq $u.scheme "rediss" -}}
{{- $password := "" -}}
{{- with $u.userinfo }}{{ $password = regexReplaceAll "^[^:]*:" . "" }}{{ end -}}
{{- if and $k.address (ne $k.address $host) -}}
{{- fail (printf "autoscaling.keda.redis.address (%s) differs from the host of secrets.redisUrl (%s); leave it empty, it is read from the URL" $k.address $host) -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $k.databaseIndex)) (ne (toString $k.databaseIndex) $db) -}}
{{- fail (printf "autoscaling.keda.redis.databaseIndex (%v) differs from the database of secrets.redisUrl (%s); leave it null" $k.databaseIndex $db) -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $k.enableTLS)) (ne $k.enableTLS $tls) -}}
{{- fail (printf "autoscaling.keda.redis.enableTLS (%v) contradicts secrets.redisUrl's scheme (%s); leave it null" $k.enableTLS $u.scheme) -}}
{{- end -}}
{{- $out = dict "address" $host "db" $db "tls" $tls "password" $password -}}
{{- else -}}
{{- if not $k.address -}}
{{- fail "autoscaling.keda.redis.address (host:port of the Redis in FARM_REDIS_URL, as KEDA reaches it) is required with secrets.existingSecret: the webhooks pool scales on its Redis list" -}}
{{- end -}}
{{- $out = dict "address" $k.address "db" (toString ($k.databaseIndex | default 0)) "tls" ($k.enableTLS | default false) "password" "" -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}
