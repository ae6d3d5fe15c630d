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
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
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
{{- $db = default (printf "postgresql://%s:%s@%s-postgres:5432/%s" $pg.user $pg.password $full $pg.database) $db -}}
{{- $redis = default (printf "redis://%s-redis:6379/0" $full) $redis -}}
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
