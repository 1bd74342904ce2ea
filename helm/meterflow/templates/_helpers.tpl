{{/*
Names, labels and the pieces of meterflow.toml shared by the templates.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "meterflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources: fullnameOverride, or <release>-<chart>
(just <release> when it already contains the chart name). Truncated to 63 characters
(DNS label); suffixed names below leave room with trunc 55.
*/}}
{{- define "meterflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The full name, shortened so that a suffix like "-headless" still fits 63 characters. */}}
{{- define "meterflow.shortname" -}}
{{- include "meterflow.fullname" . | trunc 54 | trimSuffix "-" }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "meterflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "meterflow.labels" -}}
helm.sh/chart: {{ include "meterflow.chart" . }}
{{ include "meterflow.selectorLabels" . }}
app.kubernetes.io/version: {{ include "meterflow.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meterflow
{{- end }}

{{/* Labels that select the release's pods (immutable in a StatefulSet/Deployment: never add to them). */}}
{{- define "meterflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meterflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Whether the chart deploys meterflow's distributed mode (endpoint and processor
Deployments around a Kafka log). Renders "true" or "".
*/}}
{{- define "meterflow.distributed" -}}
{{- if eq .Values.mode "distributed" }}true{{ end }}
{{- end }}

{{/*
The workloads the chart renders: "" (embedded mode: one pod), or "endpoint" and
"processor" (distributed mode). Each is also the component of its pods
(app.kubernetes.io/component) and the MF_MODE they run with. A JSON list.
*/}}
{{- define "meterflow.components" -}}
{{- if include "meterflow.distributed" . }}["endpoint","processor"]{{ else }}[""]{{ end }}
{{- end }}

{{/*
Labels selecting one workload's pods: the release's, plus app.kubernetes.io/component
in distributed mode. Takes (dict "root" $ "component" "endpoint"|"processor"|"").
*/}}
{{- define "meterflow.componentSelectorLabels" -}}
{{ include "meterflow.selectorLabels" .root }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
The name of a workload (and of its HPA and PDB): the full name, plus "-endpoint" or
"-processor" in distributed mode (truncated so the suffix fits 63 characters).
Takes (dict "root" $ "component" ...).
*/}}
{{- define "meterflow.componentName" -}}
{{- if .component }}
{{- printf "%s-%s" (include "meterflow.fullname" .root | trunc 52 | trimSuffix "-") .component }}
{{- else }}
{{- include "meterflow.fullname" .root }}
{{- end }}
{{- end }}

{{/*
The values of one workload: (dict "replicaCount" "autoscaling" "resources") from
endpoint.* / processor.* in distributed mode (resources falling back to the top-level
resources when empty), from the top-level values in embedded mode.
Takes (dict "root" $ "component" ...). Renders YAML.
*/}}
{{- define "meterflow.componentValues" -}}
{{- $v := .root.Values }}
{{- if .component }}
{{- $c := get $v .component }}
{{- toYaml (dict "replicaCount" $c.replicaCount "autoscaling" $c.autoscaling "resources" ($c.resources | default $v.resources)) }}
{{- else }}
{{- toYaml (dict "replicaCount" $v.replicaCount "autoscaling" $v.autoscaling "resources" $v.resources) }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "meterflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meterflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image tag: image.tag or the chart's appVersion. */}}
{{- define "meterflow.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The meterflow image reference; a digest wins over the tag. */}}
{{- define "meterflow.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "meterflow.imageTag" .) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding tenants.toml and the backend credentials. */}}
{{- define "meterflow.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "meterflow.fullname" . }}
{{- end }}
{{- end }}

{{/* Where the MQTT TLS Secret (tls.crt, tls.key) is mounted in the meterflow container. */}}
{{- define "meterflow.tlsDir" -}}
/etc/meterflow/tls
{{- end }}

{{/* Whether the MQTT Service is reachable from outside the cluster. Renders "true" or "". */}}
{{- define "meterflow.mqttExternal" -}}
{{- if has .Values.service.mqtt.type (list "LoadBalancer" "NodePort") }}true{{ end }}
{{- end }}

{{/*
Whether the MQTT Service carries the plain `mqtt` port. ClusterIP: always. External
(LoadBalancer/NodePort): with TLS only on `allowPlaintextExternal`; without TLS it is
the only port (meterflow.validate refuses it unless allowed). Renders "true" or "".
*/}}
{{- define "meterflow.mqttServicePlain" -}}
{{- if or (not (include "meterflow.mqttExternal" .)) (not .Values.mqtt.tls.enabled) .Values.service.mqtt.allowPlaintextExternal }}true{{ end }}
{{- end }}

{{/* Names of the Services. */}}
{{- define "meterflow.mqttServiceName" -}}
{{- printf "%s-mqtt" (include "meterflow.shortname" .) }}
{{- end }}
{{- define "meterflow.httpServiceName" -}}
{{- printf "%s-http" (include "meterflow.shortname" .) }}
{{- end }}
{{- define "meterflow.headlessServiceName" -}}
{{- printf "%s-headless" (include "meterflow.shortname" .) }}
{{- end }}

{{/*
Whether the pods run as a StatefulSet: the embedded store on a PersistentVolume.
A StatefulSet never runs two pods of one identity at once, even while a node is
unreachable, so two processes can never open the same store; its volumeClaimTemplate
outlives `helm uninstall`. Everything else is a Deployment. Renders "true" or "".
*/}}
{{- define "meterflow.statefulset" -}}
{{- if and (eq .Values.store.kind "embedded") .Values.store.persistence.enabled }}true{{ end }}
{{- end }}

{{/*
A TOML value from a Helm value. Strings go through JSON escaping, which is valid TOML
basic-string escaping (\" \\ \n \uXXXX). YAML numbers arrive as float64: whole ones
are printed as integers (meterflow's integer fields refuse 1.0).
*/}}
{{- define "meterflow.tomlValue" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}
{{- toJson $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq ($v | float64) (floor $v | float64) }}{{ printf "%d" (int64 $v) }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) }}
{{- printf "%d" $v }}
{{- else if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}{{ $items = append $items (include "meterflow.tomlValue" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "map" $v }}
{{- $items := list }}
{{- range $k, $item := $v }}{{ $items = append $items (printf "%s = %s" (toJson $k) (include "meterflow.tomlValue" $item)) }}{{ end }}
{{- printf "{ %s }" (join ", " $items) }}
{{- else }}
{{- fail (printf "meterflow: cannot render %v (%s) as a TOML value" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{/* The keys of one meterflow TOML table from a map of values, sorted; nulls skipped. */}}
{{- define "meterflow.tomlKeys" -}}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{ $k }} = {{ include "meterflow.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}

{{/*
pipeline.shards as rendered: the value when set; when 0, the container's CPU request
(resources.requests.cpu, else resources.limits.cpu; in distributed mode the
processors', which run the shards) rounded up, at least 1 - so a pod requesting 1 CPU
does not start a shard thread per core of its node. Unset: 1.
Accepts Kubernetes CPU quantities "500m", "1", "1.5", 2.
*/}}
{{- define "meterflow.shards" -}}
{{- $shards := int .Values.config.pipeline.shards }}
{{- if eq $shards 0 }}
{{- $component := ternary "processor" "" (eq (include "meterflow.distributed" .) "true") }}
{{- $res := (include "meterflow.componentValues" (dict "root" . "component" $component) | fromYaml).resources | default dict }}
{{- $cpu := dig "requests" "cpu" "" $res | default (dig "limits" "cpu" "" $res) | toString }}
{{- if not $cpu }}
{{- $shards = 1 }}
{{- else if hasSuffix "m" $cpu }}
{{- $milli := trimSuffix "m" $cpu }}
{{- if not (regexMatch "^[0-9]+$" $milli) }}
{{- fail (printf "meterflow: cannot read the CPU quantity %q in resources (for config.pipeline.shards: 0); use e.g. \"500m\" or \"2\", or set config.pipeline.shards" $cpu) }}
{{- end }}
{{- $shards = div (add (int64 $milli) 999) 1000 | int }}
{{- else }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?$" $cpu) }}
{{- fail (printf "meterflow: cannot read the CPU quantity %q in resources (for config.pipeline.shards: 0); use e.g. \"500m\" or \"2\", or set config.pipeline.shards" $cpu) }}
{{- end }}
{{- $shards = $cpu | float64 | ceil | int }}
{{- end }}
{{- $shards = max 1 $shards | int }}
{{- end }}
{{- $shards }}
{{- end }}

{{/*
meterflow.toml without secrets: what the ConfigMap holds. Tables only (no top-level
keys), so the Secret's [[tenants]] tables can be appended to it. In distributed mode
it ends with [kafka.properties], so that render-config can append the SASL password
to that table (see _pod.tpl). `mode` is not in it: each workload sets MF_MODE.
*/}}
{{- define "meterflow.configToml" -}}
# meterflow.toml rendered by the meterflow Helm chart {{ .Chart.Version }}. Secrets
# (the [[tenants]] tables, ScyllaDB/Redis credentials{{ if include "meterflow.distributed" . }}, the Kafka SASL password{{ end }}) are added in the pod from the
# Secret {{ include "meterflow.secretName" . }}; see the chart's README.md.

[mqtt]
listen = {{ printf "0.0.0.0:%d" (int .Values.ports.mqtt) | quote }}
{{- include "meterflow.tomlKeys" .Values.config.mqtt }}
{{- if .Values.mqtt.tls.enabled }}

[mqtt.tls]
listen = {{ printf "0.0.0.0:%d" (int .Values.ports.mqtts) | quote }}
cert_file = {{ printf "%s/tls.crt" (include "meterflow.tlsDir" .) | quote }}
key_file = {{ printf "%s/tls.key" (include "meterflow.tlsDir" .) | quote }}
{{- end }}

[http]
listen = {{ printf "0.0.0.0:%d" (int .Values.ports.http) | quote }}
{{- include "meterflow.tomlKeys" .Values.config.http }}

[store]
{{- if eq .Values.store.kind "scylla" }}
backend = {{ printf "scylla://%s/%s" (join "," .Values.store.scylla.contactPoints) .Values.store.scylla.keyspace | quote }}
{{- end }}
data_dir = {{ .Values.store.persistence.mountPath | quote }}
{{- if eq .Values.store.kind "embedded" }}
readings_retention_days = {{ int .Values.store.retention.readingsDays }}
dead_letter_retention_days = {{ int .Values.store.retention.deadLettersDays }}
district_hourly_retention_days = {{ int .Values.store.retention.districtHourlyDays }}
{{- end }}
{{- if eq .Values.store.kind "scylla" }}

[store.scylla]
replication_factor = {{ int .Values.store.scylla.replicationFactor }}
consistency = {{ .Values.store.scylla.consistency | quote }}
{{- include "meterflow.tomlKeys" .Values.store.scylla.settings }}
{{- end }}
{{- if and (eq .Values.cache.kind "redis") .Values.cache.redis.settings }}

[cache.redis]
{{- include "meterflow.tomlKeys" .Values.cache.redis.settings }}
{{- end }}

[pipeline]
{{- $pipeline := deepCopy .Values.config.pipeline }}
{{- $_ := set $pipeline "shards" (int (include "meterflow.shards" .)) }}
{{- include "meterflow.tomlKeys" $pipeline }}

[limits]
{{- include "meterflow.tomlKeys" .Values.config.limits }}

[log]
{{- include "meterflow.tomlKeys" .Values.config.log }}
{{- with .Values.config.processors }}

[processors]
{{- include "meterflow.tomlKeys" . }}
{{- end }}
{{- if include "meterflow.distributed" . }}
{{- $kafka := omit .Values.config.kafka "properties" }}

[kafka]
{{- include "meterflow.tomlKeys" $kafka }}

# Last table: render-config appends "sasl.password" (from the Secret) here.
[kafka.properties]
{{- range $k, $v := .Values.config.kafka.properties | default dict }}
{{ toJson $k }} = {{ toJson (toString $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The [[tenants]] tables with their credentials: the Secret's tenants.toml. */}}
{{- define "meterflow.tenantsToml" -}}
# Tenants of meterflow, rendered by the meterflow Helm chart. Secret.
{{- range .Values.tenants }}

[[tenants]]
id = {{ .id | toJson }}
{{- with .mqttPassword }}
mqtt_password = {{ . | toJson }}
{{- end }}
{{- with .meterSecret }}
meter_secret = {{ . | toJson }}
{{- end }}
{{- with .integrationPassword }}
integration_password = {{ . | toJson }}
{{- end }}
api_token = {{ .apiToken | toJson }}
{{- if hasKey . "requireMac" }}
require_mac = {{ ternary "true" "false" .requireMac }}
{{- end }}
{{- if .meters }}
meters = {{ include "meterflow.tomlValue" .meters }}
{{- end }}
{{- if .meterKeys }}

[tenants.meter_keys]
{{- range $meter, $key := .meterKeys }}
{{ $meter | toJson }} = {{ $key | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Refuses values that would install a meterflow that cannot start or cannot be trusted,
with a message that says what to do. Rendered (empty) by every workload template.
*/}}
{{- define "meterflow.validate" -}}
{{- if and (not .Values.existingSecret) (empty .Values.tenants) }}
{{- fail `

meterflow: no tenants configured.
In Kubernetes meterflow listens on 0.0.0.0, where it refuses anonymous meters and
unauthenticated API calls, so at least one tenant with credentials is required:

  tenants:
    - id: utility-a
      meterSecret: <secret the meters' passwords derive from; or mqttPassword>
      apiToken: <bearer token of the tenant's API and dashboard>

(each at least 16 characters, e.g. openssl rand -hex 16)

or set existingSecret to a Secret holding a tenants.toml key. See the chart's README.md.` }}
{{- end }}
{{- $ids := dict }}
{{- range .Values.tenants }}
{{- if not (and .id .apiToken (or .mqttPassword .meterSecret)) }}
{{- fail (printf "meterflow: every tenant needs id, apiToken and meterSecret or mqttPassword (tenant %q lacks one): meterflow refuses anonymous meters and unauthenticated API calls beyond loopback" (.id | default "<no id>")) }}
{{- end }}
{{- $tenant := . }}
{{- range $key := list "mqttPassword" "meterSecret" "integrationPassword" "apiToken" }}
{{- $secret := get $tenant $key }}
{{- $chars := len (splitList "" (toString $secret)) }}
{{- if and $secret (lt $chars 16) }}
{{- fail (printf "meterflow: tenant %q: %s has %d characters, at least 16 are required (meterflow refuses shorter passwords, secrets and tokens); generate one with: openssl rand -hex 16" $tenant.id $key $chars) }}
{{- end }}
{{- end }}
{{- if hasKey $ids .id }}
{{- fail (printf "meterflow: tenant %q is configured twice in tenants" .id) }}
{{- end }}
{{- $_ := set $ids .id true }}
{{- end }}
{{- if include "meterflow.distributed" . }}
{{- include "meterflow.validateDistributed" . }}
{{- else }}
{{- /* Embedded mode: one pod (the distributed mode is how meterflow scales out). */}}
{{- if .Values.autoscaling.enabled }}
{{- fail (printf "meterflow: autoscaling.enabled is refused: an HPA would run several pods, and meterflow runs as exactly one pod in embedded mode - %s. Set autoscaling.enabled=false and scale one pod up (resources.requests.cpu, config.pipeline.shards), or scale out with mode=distributed (endpoint.autoscaling, processor.autoscaling; ScyllaDB, Redis and Kafka)." (include "meterflow.whyOnePod" .)) }}
{{- end }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "meterflow: replicaCount is %d, but meterflow runs as exactly one pod in embedded mode - %s. Set replicaCount=1 and scale one pod up (resources.requests.cpu, config.pipeline.shards), or scale out with mode=distributed (endpoint.replicaCount, processor.replicaCount; ScyllaDB, Redis and Kafka)." (int .Values.replicaCount) (include "meterflow.whyOnePod" .)) }}
{{- end }}
{{- end }}
{{- if eq .Values.store.kind "scylla" }}
{{- if empty .Values.store.scylla.contactPoints }}
{{- fail "meterflow: store.kind=scylla needs store.scylla.contactPoints (host:port of ScyllaDB nodes)" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.cache.kind "redis") (not .Values.existingSecret) (not .Values.cache.redis.url) }}
{{- fail "meterflow: cache.kind=redis needs cache.redis.url (or existingSecret with a redis-url key)" }}
{{- end }}
{{- if and .Values.mqtt.tls.enabled (not .Values.mqtt.tls.existingSecret) }}
{{- fail "meterflow: mqtt.tls.enabled needs mqtt.tls.existingSecret: the name of a kubernetes.io/tls Secret with tls.crt and tls.key (e.g. a cert-manager Certificate's secretName)" }}
{{- end }}
{{- if and .Values.mqtt.tls.enabled (eq (int .Values.ports.mqtts) (int .Values.ports.mqtt)) }}
{{- fail "meterflow: ports.mqtts and ports.mqtt must differ (meterflow runs the plain and the TLS listener side by side)" }}
{{- end }}
{{- $svc := .Values.service.mqtt }}
{{- if and (include "meterflow.mqttExternal" .) (not .Values.mqtt.tls.enabled) (not $svc.allowPlaintextExternal) (not (and (eq $svc.type "LoadBalancer") $svc.loadBalancerSourceRanges)) }}
{{- fail (printf `

meterflow: service.mqtt.type is %s but MQTT TLS is off: the Service would expose
plaintext MQTT (meters' passwords in clear text) outside the cluster. Either
  - turn on TLS: mqtt.tls.enabled=true and mqtt.tls.existingSecret=<kubernetes.io/tls Secret>
    (the Service then exposes only mqtts, port service.mqtt.mqttsPort);
  - restrict it (LoadBalancer): service.mqtt.loadBalancerSourceRanges=[<your meters' networks>];
  - or accept it explicitly (private network, or a load balancer that terminates TLS):
    service.mqtt.allowPlaintextExternal=true;
  - or keep it in the cluster: service.mqtt.type=ClusterIP.` $svc.type) }}
{{- end }}
{{- if lt (int .Values.terminationGracePeriodSeconds) 60 }}
{{- fail "meterflow: terminationGracePeriodSeconds must be at least 60 so in-flight batches are stored on shutdown" }}
{{- end }}
{{- end }}

{{/*
The guards of distributed mode (part of meterflow.validate): a store and a cache every
replica shares, no secret in the ConfigMap's [kafka.properties], no more processors
than partitions, and the embedded-mode pod count values left alone.
*/}}
{{- define "meterflow.validateDistributed" -}}
{{- if ne .Values.store.kind "scylla" }}
{{- fail (printf `

meterflow: mode=distributed needs store.kind=scylla (it is %q): every endpoint and
processor replica shares one store, and the embedded store is one pod's disk. Set
  store.kind: scylla
  store.scylla.contactPoints: [<host:port of your ScyllaDB nodes>]` .Values.store.kind) }}
{{- end }}
{{- if ne .Values.cache.kind "redis" }}
{{- fail (printf `

meterflow: mode=distributed needs cache.kind=redis (it is %q): the in-process cache
would hold only the meters of one processor, and the API and dashboards read it from
any replica. Set
  cache.kind: redis
  cache.redis.url: redis://[:password@]host:6379/0   (or existingSecret with a redis-url key;
                   Redis Cluster: redis+cluster://host:port,host:port,...)` .Values.cache.kind) }}
{{- end }}
{{- if regexMatch "^(127\\.0\\.0\\.1|localhost)(:|$)" .Values.config.kafka.brokers }}
{{- fail (printf "meterflow: mode=distributed needs config.kafka.brokers, the bootstrap address of your Kafka (it is %q, meterflow's default, which is the pod itself), e.g. my-cluster-kafka-bootstrap.kafka.svc:9092" .Values.config.kafka.brokers) }}
{{- end }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- fail "meterflow: replicaCount and autoscaling apply to embedded mode only; with mode=distributed set endpoint.replicaCount / endpoint.autoscaling and processor.replicaCount / processor.autoscaling (leave replicaCount at 1 and autoscaling.enabled false)" }}
{{- end }}
{{- range $key, $_ := .Values.config.kafka.properties }}
{{- if regexMatch "(?i)(password|secret)" $key }}
{{- fail (printf "meterflow: config.kafka.properties.%s would put a secret into the ConfigMap; %s" $key (ternary "set kafka.saslPassword instead (it goes to the Secret, key kafka-sasl-password, and reaches [kafka.properties] only inside the pod)" "the chart passes no other secret librdkafka property: use an unencrypted key file from a Secret volume (extraVolumes, extraVolumeMounts)" (eq $key "sasl.password"))) }}
{{- end }}
{{- end }}
{{- $partitions := int .Values.config.kafka.partitions }}
{{- $p := .Values.processor }}
{{- if gt (int $p.replicaCount) $partitions }}
{{- fail (printf "meterflow: processor.replicaCount is %d, but config.kafka.partitions is %d: a partition is the unit of ownership, so at most %d processors get work and the others idle. Lower processor.replicaCount, or create the topic with more partitions and raise config.kafka.partitions (it moves meters between owners; see docs/distributed.md)." (int $p.replicaCount) $partitions $partitions) }}
{{- end }}
{{- if and $p.autoscaling.enabled (gt (int $p.autoscaling.maxReplicas) $partitions) }}
{{- fail (printf "meterflow: processor.autoscaling.maxReplicas is %d, but config.kafka.partitions is %d: at most %d processors get partitions (one owner per partition), so the HPA would add idle pods while the consumer lag stays. Set processor.autoscaling.maxReplicas to at most %d." (int $p.autoscaling.maxReplicas) $partitions $partitions $partitions) }}
{{- end }}
{{- range $component := list "endpoint" "processor" }}
{{- $a := (get $.Values $component).autoscaling }}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "meterflow: %s.autoscaling.minReplicas (%d) is above its maxReplicas (%d)" $component (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Why more than one pod would be wrong, for the store in use (meterflow.validate's messages). */}}
{{- define "meterflow.whyOnePod" -}}
{{- if eq .Values.store.kind "embedded" -}}
with store.kind=embedded each pod would hold its own store, so the API would see part of the data and a meter moving between pods would lose its dedupe state
{{- else -}}
with ScyllaDB{{ if eq .Values.cache.kind "redis" }} and Redis{{ end }} each pod would write its own district totals and analytics summary as absolute values, overwriting the other pods' (and each keeps its meters' dedupe and VEE state in memory)
{{- end -}}
{{- end }}

{{/* PromQL label matchers selecting this release's series in alert rules. */}}
{{- define "meterflow.alertSelector" -}}
{{- if .Values.metrics.prometheusRule.selector }}
{{- .Values.metrics.prometheusRule.selector }}
{{- else }}
{{- printf "job=%q, namespace=%q" (include "meterflow.httpServiceName" .) .Release.Namespace }}
{{- end }}
{{- end }}
